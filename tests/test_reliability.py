"""Reliability: non-finite steps, checkpoint integrity, mismatched pairings, run-dir protection,
interruption and resume, determinism, and one process vs two giving the same evaluation."""
import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf
from safetensors.torch import load_file

import distill
from kd.checkpoint import CheckpointError, read_checkpoint, save_model
from kd.config import load_config
from kd.data import build_splits
from kd.engine import NonFiniteLoss, StageSpec, fit
from kd.pipeline import RunDirError, prepare_run_dir
from kd.stages import load_teacher, make_accelerator
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- numerics
class ToyData(torch.utils.data.Dataset):
    def __len__(self):
        return 32

    def __getitem__(self, i):
        return {"x": torch.full((2,), float(i)), "y": torch.tensor(i % 2)}


class ToyTask(nn.Module):
    """A loss that turns NaN on the `bad_call`-th forward."""

    def __init__(self, bad_call: int):
        super().__init__()
        self.w = nn.Parameter(torch.ones(2))
        self.calls, self.bad_call = 0, bad_call

    def forward(self, batch, t_out=None):
        self.calls += 1
        fit_term = (self.w * batch["x"]).mean() ** 2 * 1e-3
        bad = fit_term * (float("nan") if self.calls == self.bad_call else 0.0)
        return {"fit": fit_term, "bad": bad}, {}


def toy_fit(tmp_path, mode):
    cfg = load_config(overrides=["data.batch_size=8", f"train.nonfinite={mode}", "train.log_every=1"])
    task = ToyTask(bad_call=3)
    summary = fit(make_accelerator(cfg), cfg, StageSpec("toy", 2, 1e-2), task, ToyData(), None, ["a", "b"], tmp_path)
    return task, summary


def test_nonfinite_loss_stops_with_step_and_terms(tmp_path):
    with pytest.raises(NonFiniteLoss, match=r"at step 2 \(epoch 0\); terms: \{'fit': [0-9.e-]+, 'bad': nan\}"):
        toy_fit(tmp_path, "stop")
    assert not (tmp_path / "state" / "toy").exists()                 # nothing was checkpointed


def test_nonfinite_loss_skip_mode_skips_that_step_only(tmp_path):
    task, summary = toy_fit(tmp_path, "skip")
    assert summary["skipped_steps"] == 1 and summary["steps"] == 2 * 4 - 1
    assert torch.isfinite(task.w).all()
    state = load_file(str(tmp_path / "state" / "toy" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in state.values())


def test_checkpoint_refuses_non_finite_weights(tmp_path):
    m = nn.Linear(2, 2)
    with torch.no_grad():
        m.weight[0, 0] = float("inf")
    with pytest.raises(CheckpointError, match=r"non-finite values in \['weight'\]"):
        save_model(tmp_path / "ck", m, {"role": "x"})
    assert not (tmp_path / "ck").exists()


# ----------------------------------------------------------------------------- checkpoint files
def test_truncated_corrupt_and_missing_checkpoints(tmp_path):
    save_model(tmp_path / "ck", nn.Linear(64, 64), {"role": "student"})
    weights = tmp_path / "ck" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(tmp_path / "ck")
    weights.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(tmp_path / "ck")
    (tmp_path / "ck" / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_checkpoint(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="has no model.safetensors"):
        read_checkpoint(tmp_path / "nowhere")


def test_teacher_checkpoint_that_does_not_fit_the_data(tmp_path, text_cache):
    teacher_run = tmp_path / "t"
    distill.main(["--config", "configs/synthetic_smoke.yaml", *TINY, f"run_dir={teacher_run}",
                  f"text.cache_dir={text_cache}", "stage=teacher"])
    with pytest.raises(CheckpointError, match="channels: checkpoint 3 vs data 4"):
        distill.main(["--config", "configs/synthetic_smoke.yaml", *TINY, f"run_dir={tmp_path / 's'}",
                      f"text.cache_dir={text_cache}", "stage=student", "data.synthetic.num_channels=4",
                      f"teacher.checkpoint={teacher_run / 'teacher'}"])
    with pytest.raises(CheckpointError, match=r"teacher.text_guidance: checkpoint True vs config False.*"
                                              r"teacher.vqshape.dim: checkpoint 32 vs config 16"):
        distill.main(["--config", "configs/synthetic_smoke.yaml", *TINY, f"run_dir={tmp_path / 'v'}",
                      f"text.cache_dir={text_cache}", "stage=student", "teacher.text_guidance=false",
                      "kd.sources=[{name: shape, tokens: shape_tokens}]", "kd.action_kl.weight=0",   # a signal pairing
                      "teacher.vqshape.dim=16", f"teacher.checkpoint={teacher_run / 'teacher'}"])
    # A checkpoint written before a config key existed loads: the key takes its default.
    meta_path = teacher_run / "teacher" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]["teacher"]["cnn"]["wrn_stem_stride"]
    meta_path.write_text(json.dumps(meta))
    cfg = load_config(teacher_run / "config.yaml")
    expect = OmegaConf.to_container(cfg.teacher, resolve=True)
    load_teacher(teacher_run / "teacher", build_splits(cfg.data), expect=expect)
    # how a teacher teaches is the pairing's choice: no mismatch, and the pairing's value is used
    taught = copy.deepcopy(expect)
    taught["fusion"]["teach_keys"] = "vocab"
    assert load_teacher(teacher_run / "teacher", build_splits(cfg.data), expect=taught)[0].fusion.teach_keys == "vocab"
    expect["cnn"]["wrn_stem_stride"] = 2
    with pytest.raises(CheckpointError, match="teacher.cnn.wrn_stem_stride: checkpoint 1 vs config 2"):
        load_teacher(teacher_run / "teacher", build_splits(cfg.data), expect=expect)
    with pytest.raises(CheckpointError, match="stage=student needs a teacher checkpoint"):
        distill.main(["--config", "configs/synthetic_smoke.yaml", *TINY, f"run_dir={tmp_path / 'u'}",
                      f"text.cache_dir={text_cache}", "stage=student"])


def test_run_dir_of_another_config_is_refused(tmp_path):
    cfg = load_config(overrides=[f"run_dir={tmp_path}", "seed=1"])
    accel = make_accelerator(cfg)
    prepare_run_dir(cfg, accel)
    with pytest.raises(RunDirError, match=r"differs at \['seed'\].*overwrite=true"):
        prepare_run_dir(load_config(overrides=[f"run_dir={tmp_path}", "seed=2"]), accel)
    prepare_run_dir(load_config(overrides=[f"run_dir={tmp_path}", "seed=1", "stage=teacher", "resume=true"]), accel)
    prepare_run_dir(load_config(overrides=[f"run_dir={tmp_path}", "seed=2", "overwrite=true"]), accel)
    # a run dir written before a key existed: the key takes its default, which is no difference
    saved = OmegaConf.load(tmp_path / "config.yaml")
    del saved.student.cnn.wrn_stem_stride
    OmegaConf.save(saved, tmp_path / "config.yaml")
    prepare_run_dir(load_config(overrides=[f"run_dir={tmp_path}", "seed=2"]), accel)
    with pytest.raises(RunDirError, match=r"differs at \['student.cnn.wrn_stem_stride'\]"):
        prepare_run_dir(load_config(overrides=[f"run_dir={tmp_path}", "seed=2", "student.cnn.wrn_stem_stride=1"]),
                        accel)


# ----------------------------------------------------------------------------- whole runs in subprocesses
LONGER = [*TINY, "train.max_steps=null", "train.teacher_epochs=2", "train.epochs=3", "train.baseline=false"]
ROLES = ("teacher", "student")


def env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def run_cli(args, **kw):
    return subprocess.run([sys.executable, "distill.py", *args], cwd=ROOT, env=env(), check=True,
                          capture_output=True, text=True, **kw)


def metrics(run_dir):
    r = json.loads((Path(run_dir) / "results.json").read_text())
    return {k: (r[k]["accuracy"], r[k]["macro_f1"], r[k]["confusion"]) for k in ROLES}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, text_cache):
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    run_cli(["--config", "configs/synthetic_smoke.yaml", *LONGER, f"run_dir={run_dir}", f"text.cache_dir={text_cache}"])
    return run_dir


@pytest.mark.slow
def test_same_seed_same_results(reference_run, tmp_path, text_cache):
    again = tmp_path / "again"
    run_cli(["--config", "configs/synthetic_smoke.yaml", *LONGER, f"run_dir={again}", f"text.cache_dir={text_cache}"])
    assert metrics(again) == metrics(reference_run)
    a = load_file(str(reference_run / "student" / "model.safetensors"))
    b = load_file(str(again / "student" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(reference_run, tmp_path, text_cache):
    run_dir = tmp_path / "killed"
    args = ["--config", "configs/synthetic_smoke.yaml", *LONGER, f"run_dir={run_dir}", f"text.cache_dir={text_cache}"]
    proc = subprocess.Popen([sys.executable, "distill.py", *args], cwd=ROOT, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = run_dir / "state" / "student" / "progress.json"
    deadline = time.time() + 300
    while not progress.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    epoch = json.loads(progress.read_text())["epoch"]
    assert epoch < 2 and not (run_dir / "results.json").exists()       # killed mid-training
    run_cli([*args, "resume=true"])
    assert metrics(run_dir) == metrics(reference_run)


@pytest.mark.slow
def test_one_and_two_processes_evaluate_identically(reference_run, tmp_path):
    outs = {}
    for n in (1, 2):
        out = tmp_path / f"eval{n}.json"
        launch = ["-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
                  "--dynamo_backend", "no", "--num_processes", str(n), *(["--multi_gpu"] if n > 1 else []),
                  "-m", "kd.evaluate", "--run-dir", str(reference_run), "--out", str(out)]
        subprocess.run([sys.executable, *launch], cwd=ROOT, env=env(), check=True, capture_output=True, text=True)
        outs[n] = json.loads(out.read_text())
    assert outs[1]["num_processes"] == 1 and outs[2]["num_processes"] == 2
    test_windows = json.loads((reference_run / "results.json").read_text())["data"]["windows"]["test"]
    for role in ROLES:
        assert outs[1][role]["n"] == outs[2][role]["n"] == test_windows          # each window exactly once
        assert outs[1][role]["confusion"] == outs[2][role]["confusion"]
        assert outs[1][role]["accuracy"] == outs[2][role]["accuracy"]
