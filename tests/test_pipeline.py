"""End to end: a few optimizer steps of every pairing config on synthetic data, then the
exported student predicting on its own."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import distill
from tests.conftest import TINY

CONFIGS = sorted(Path(__file__).resolve().parents[1].glob("configs/*.yaml"))


def run(config, tmp_path, text_cache, *extra):
    run_dir = tmp_path / config.stem
    distill.main(["--config", str(config), *TINY, f"run_dir={run_dir}", f"text.cache_dir={text_cache}", *extra])
    return run_dir, json.loads((run_dir / "results.json").read_text())


def scalar_tags(run_dir, stage):
    ea = EventAccumulator(str(run_dir / "tb" / stage))
    ea.Reload()
    return set(ea.Tags()["scalars"])


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_pairing_runs_a_few_steps(config, tmp_path, text_cache):
    # prior_prob=0: with only 2 steps, every step must use the teacher's sources so that the
    # alignment terms are logged (the prior-only path is covered in test_workspace.py)
    run_dir, results = run(config, tmp_path, text_cache, "kd.workspace.prior_prob=0.0")
    roles = [r for r in ("teacher", "student", "baseline") if r in results]
    assert roles, results
    for role in roles:
        r = results[role]
        assert 0.0 <= r["accuracy"] <= 1.0 and r["params"] > 0
        if role != "teacher":                       # the workspace's training-only parts excluded
            assert 0 < r["params_inference"] <= r["params"]
        assert r["n"] == results["data"]["windows"]["test"]                     # every test window once
        assert np.array(r["confusion"]).sum() == r["n"]
        assert (run_dir / role / "model.safetensors").is_file()
        tags = scalar_tags(run_dir, role)
        assert {"train/loss_total", "train/lr", "val/accuracy"} <= tags
        assert any(t.startswith("train/loss_ce") for t in tags)
    if "student" in results:
        cfg = (run_dir / "config.yaml").read_text()
        tags = scalar_tags(run_dir, "student")
        if "coef: dynamic" in cfg:
            assert {"train/coef_shape", "train/coef_action", "train/loss_align"} <= tags
    assert (run_dir / "config.yaml").is_file()


def test_text_teacher_writes_interpretability_artefacts(tmp_path, text_cache):
    run_dir, results = run(Path("configs/synthetic_smoke.yaml"), tmp_path, text_cache, "stage=teacher")
    for f in ("shapes.png", "code_actions.png", "code_usage.json", "frozen.safetensors", "meta.json"):
        assert (run_dir / "teacher" / f).is_file(), f
    interp = results["teacher"]["interpretability"]
    assert 1 <= interp["codes_used"] <= 64 and interp["perplexity"] >= 1
    tags = scalar_tags(run_dir, "teacher")
    assert {f"train/loss_{t}" for t in ("x", "vq", "s", "div", "act", "label", "con", "ce")} <= tags
    assert "oracle_class_text_accuracy" in results["teacher"]
    assert "student" not in results


def test_exported_student_predicts_without_the_teacher(tmp_path, text_cache):
    from kd.data import build_splits
    from kd.config import load_config
    from kd.predict import Predictor
    run_dir, results = run(Path("configs/synthetic_smoke.yaml"), tmp_path, text_cache)
    shutil.rmtree(run_dir / "teacher")                                       # the teacher is gone
    predictor = Predictor(run_dir / "student")
    splits = build_splits(load_config(run_dir / "config.yaml").data)
    x = torch.stack([splits.test[i]["x"] for i in range(len(splits.test))])
    y = np.array([int(splits.test[i]["y"]) for i in range(len(splits.test))])
    logits = predictor.logits(x)
    assert predictor.fused is not None                                      # a CNN student: fused form
    assert ((logits.argmax(-1).numpy() == y).mean() == pytest.approx(results["student"]["accuracy"]))
    torch.testing.assert_close(logits, Predictor(run_dir / "student", fused=False).logits(x), atol=1e-5, rtol=0)
    names = {type(m).__name__ for m in predictor.modules()}
    assert "MMVQShape" not in names and {"Workspace", "PriorReadout"} <= names
    with pytest.raises(ValueError, match="no sub-action read-out"):           # not distilled with sub_kl
        predictor.timeline(x)
    # A checkpoint from before meta.json held the workspace's constructor arguments: a clear error
    # naming the commit that re-exports it.
    from kd.checkpoint import CheckpointError
    meta_file = run_dir / "student" / "meta.json"
    meta = json.loads(meta_file.read_text())
    ws = meta.pop("workspace")
    meta_file.write_text(json.dumps({**meta, "workspace_sources": ws["sources"]}))
    with pytest.raises(CheckpointError, match="re-export it with commit 114434b"):
        Predictor(run_dir / "student")


def test_cpu_threads_split_between_local_processes(monkeypatch):
    """`accelerate launch` exports OMP_NUM_THREADS=1; the run sets CPUs / local processes instead."""
    import os
    from types import SimpleNamespace
    from kd.pipeline import set_cpu_threads
    before = torch.get_num_threads()
    cpus = len(os.sched_getaffinity(0))
    try:
        accel = SimpleNamespace(device=torch.device("cpu"), num_processes=1)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
        assert set_cpu_threads(None, accel) == cpus == torch.get_num_threads()
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * cpus))
        assert set_cpu_threads(None, accel) == 1 == torch.get_num_threads()
        assert set_cpu_threads(3, accel) == 3 == torch.get_num_threads()
        with pytest.raises(ValueError, match="num_threads"):
            set_cpu_threads(0, accel)
        assert set_cpu_threads(None, SimpleNamespace(device=torch.device("cuda"), num_processes=1)) is None
    finally:
        torch.set_num_threads(before)


def test_several_teachers_as_knowledge_sources(tmp_path, text_cache):
    """A WRN-16-3 teacher from an earlier run joins the text-guided teacher as a third workspace
    source (kd.extra_teachers): it gets a dynamic coefficient, stays frozen, and is evaluated."""
    from safetensors.torch import load_file
    cnn_dir, _ = run(Path("configs/wrn16_3_wrn16_1.yaml"), tmp_path, text_cache, "stage=teacher")
    ckpt = cnn_dir / "teacher"
    before = load_file(str(ckpt / "model.safetensors"))
    sources = ("kd.sources=[{name: shape, tokens: shape_tokens}, {name: action, tokens: action_tokens}, "
               "{name: wrn, tokens: wrn/feature_tokens}]")
    run_dir, results = run(Path("configs/synthetic_smoke.yaml"), tmp_path, text_cache, sources,
                           f"kd.extra_teachers=[{{name: wrn, checkpoint: {ckpt}}}]", "kd.workspace.prior_prob=0.0",
                           "train.baseline=false")
    assert {"train/coef_shape", "train/coef_action", "train/coef_wrn", "train/dist_wrn",
            "teacher/main/val_macro_f1", "teacher/wrn/val_macro_f1"} <= scalar_tags(run_dir, "student")
    assert 0.0 <= results["extra_teachers"]["wrn"]["accuracy"] <= 1.0
    after = load_file(str(ckpt / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    meta = json.loads((run_dir / "student" / "meta.json").read_text())
    assert [s[0] for s in meta["workspace"]["sources"]] == ["shape", "action", "wrn"]
    # a loss bound to the WRN's source reads the WRN (tests/test_workspace.py); one it cannot read fails at load
    from kd.config import ConfigError, load_config
    base = ["kd.workspace.prior_prob=0.0", sources, f"kd.extra_teachers=[{{name: wrn, checkpoint: {ckpt}}}]"]
    load_config("configs/synthetic_smoke.yaml", [*base, "kd.sp.weight=1.0", "kd.sp.source=wrn"])
    with pytest.raises(ConfigError, match="kd.attr reads the main teacher's token space; bind it to a source of"):
        load_config("configs/synthetic_smoke.yaml", [*base, "kd.attr.source=wrn"])
    with pytest.raises(ConfigError, match=r"kd.sp.source='x' reads teacher 'cnn', which is not in kd.extra_teachers"):
        load_config("configs/synthetic_smoke.yaml", [*base, "kd.workspace.enabled=false", "kd.coef=fixed",
                                                     "kd.sources=[{name: x, tokens: cnn/feature_tokens}]",
                                                     "kd.logit_kd.weight=0", "kd.attr.weight=0", "kd.code_kl.weight=0",
                                                     "kd.action_kl.weight=0", "kd.sp.weight=1.0", "kd.sp.source=x"])


def test_extra_teacher_errors_name_the_fix(tmp_path, text_cache):
    from kd.config import ConfigError
    with pytest.raises(ConfigError, match="kd.extra_teachers 'wrn': no teacher checkpoint"):
        run(Path("configs/synthetic_smoke.yaml"), tmp_path, text_cache,
            f"kd.extra_teachers=[{{name: wrn, checkpoint: {tmp_path / 'nope'}}}]")
    with pytest.raises(ConfigError, match="needs a main teacher"):
        run(Path("configs/baseline_wrn16_1.yaml"), tmp_path, text_cache,
            f"kd.extra_teachers=[{{name: wrn, checkpoint: {tmp_path}}}]")


def test_cached_teacher_outputs_train_the_same_student(tmp_path, text_cache):
    """train.cache_teacher computes the frozen teacher's outputs once per training window; the student
    it trains sees the same loss terms as on live teacher outputs. (Weights agree to float noise,
    except that Adam turns the noise in a gradient that is zero in exact arithmetic -- a bias before a
    LayerNorm -- into a full lr-sized step, so the loss terms are what is compared.)"""
    from kd.config import load_config
    from kd.data import build_splits
    from kd.engine import TeacherCache
    from kd.stages import load_teacher
    config = Path("configs/default.yaml")
    t_dir, _ = run(config, tmp_path, text_cache, "stage=teacher")
    students = {}
    for cache in ("true", "false"):
        run_dir = tmp_path / f"student_cache_{cache}"
        distill.main(["--config", str(config), *TINY, f"run_dir={run_dir}", f"text.cache_dir={text_cache}",
                      "stage=student", f"teacher.checkpoint={t_dir / 'teacher'}", f"train.cache_teacher={cache}",
                      "train.mixup=0",    # a cache answers for the unchanged windows only
                      "train.baseline=false", "train.max_steps=3", "kd.workspace.prior_prob=0.0"])
        ea = EventAccumulator(str(run_dir / "tb" / "student"))
        ea.Reload()
        students[cache] = {t: [e.value for e in ea.Scalars(t)] for t in ea.Tags()["scalars"] if t.startswith("train/loss_")}
    assert students["true"].keys() == students["false"].keys() and "train/loss_attr" in students["true"]
    for tag, values in students["true"].items():
        assert len(values) == 3 and values == pytest.approx(students["false"][tag], rel=1e-3, abs=1e-5), tag
    # the cache itself: any batch of windows, in any order, looks up what the teacher computes live
    cfg = load_config(config, [*TINY, f"text.cache_dir={text_cache}"])
    splits = build_splits(cfg.data)
    teacher, _ = load_teacher(t_dir / "teacher", splits)
    cached = TeacherCache(teacher, splits.train, batch_size=7)
    idx = torch.randperm(len(splits.train))[:5]
    batch = {k: torch.stack([splits.train[int(i)][k] for i in idx]) for k in ("x", "y", "index")}
    live, got = teacher.teach(batch["x"], batch["y"]), cached.teach_batch(batch)
    assert got.provided() == live.provided()
    assert all(torch.allclose(v, live.tensors()[k], atol=1e-5) for k, v in got.tensors().items())
