"""Validation that selects: a stage keeps the weights of its best validation epoch (and a resumed
stage still knows which that was); test metrics per subject; a missing teacher checkpoint is an
error unless the run is asked to train it."""
import json

import pytest
import torch
import torch.nn as nn

import distill
from kd.checkpoint import CheckpointError
from kd.config import ConfigError, load_config
from kd.engine import StageSpec, evaluate, eval_loader, fit
from kd.stages import make_accelerator


class ValData(torch.utils.data.Dataset):
    """Eight windows of two subjects; the label is the window's parity."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"x": torch.tensor([float(i)]), "y": torch.tensor(i % 2), "subject": torch.tensor(1 + i // 4)}


class ScriptedTask(nn.Module):
    """Trains `w` by a fixed step each batch; its validation quality is scripted per epoch
    (`quality[e]` windows of 8 predicted right after epoch e), and it records `w` at each validation."""

    def __init__(self, quality):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.quality, self.seen = quality, []

    def forward(self, batch, t_out=None):
        return {"fit": -self.w.sum() * 0.1}, {}

    def predict(self, batch):
        if len(self.seen) < len(self.quality) and int(batch["x"][0]) == 0:
            self.seen.append(float(self.w.detach()))
        good = torch.arange(len(batch["y"])) < self.quality[len(self.seen) - 1]
        label = torch.where(good, batch["y"], 1 - batch["y"])
        return nn.functional.one_hot(label, 2).float()


def scripted_fit(tmp_path, quality, select="best_val", resume=False, epochs=None):
    cfg = load_config(overrides=["data.batch_size=4", "data.eval_batch_size=8", "train.grad_clip=0",
                                 "train.warmup_steps=1", f"resume={str(resume).lower()}"])
    task = ScriptedTask(quality)
    spec = StageSpec("toy", epochs or len(quality), 1e-1, select=select)
    summary = fit(make_accelerator(cfg), cfg, spec, task, ValData(), ValData(), ["even", "odd"], tmp_path)
    return task, summary


def test_best_validation_epoch_weights_are_kept(tmp_path):
    task, summary = scripted_fit(tmp_path, quality=[4, 8, 2, 6])
    assert summary["selected_epoch"] == 2 and summary["val"]["macro_f1"] == 1.0
    assert float(task.w.detach()) == task.seen[1] != task.seen[-1]             # epoch 2's weights, not the last
    assert summary["val_last"]["accuracy"] == 6 / 8


def test_last_epoch_kept_when_asked(tmp_path):
    task, summary = scripted_fit(tmp_path, quality=[4, 8, 2, 6], select="last")
    assert summary["selected"] == "last" and float(task.w.detach()) == task.seen[-1]


def test_resumed_stage_still_knows_its_best_epoch(tmp_path):
    scripted_fit(tmp_path, quality=[4, 8], epochs=4)   # then "interrupt" it after 2 of 4 epochs:
    progress = tmp_path / "state" / "toy" / "progress.json"
    record = json.loads(progress.read_text())
    assert record["best"]["epoch"] == 1 and record["epoch"] == 3
    record["epoch"], record["step"] = 1, 4
    progress.write_text(json.dumps(record))
    # the resumed epochs score below the best one, so the best (saved before the "interruption") wins
    task, summary = scripted_fit(tmp_path, quality=[2, 6], resume=True, epochs=4)
    assert summary["selected_epoch"] == 2 and summary["val"]["macro_f1"] == 1.0


def test_per_subject_metrics(tmp_path):
    cfg = load_config()
    task = ScriptedTask([6])
    task.seen = [0.0]                                                   # score with quality 6 of 8
    loader = eval_loader(ValData(), 8)
    report = evaluate(make_accelerator(cfg), task.predict, loader, ["even", "odd"])
    # windows 0-5 right (subject 1: all 4; subject 2: 2 of 4)
    assert report["per_subject"]["1"]["accuracy"] == 1.0 and report["per_subject"]["2"]["accuracy"] == 0.5
    assert report["per_subject"]["2"]["n"] == 4 and report["accuracy"] == 6 / 8


def test_bad_select_value_fails_at_load():
    with pytest.raises(ConfigError, match=r"train.select='first' is not one of \['best_val', 'last'\]"):
        load_config(overrides=["train.select=first"])


def test_missing_teacher_checkpoint_is_an_error_unless_training_it(tmp_path):
    with pytest.raises(CheckpointError, match=r"teacher.checkpoint='.*nowhere' holds no teacher.*stage=teacher"):
        distill.main(["--config", "configs/synthetic_smoke.yaml", f"run_dir={tmp_path / 'r'}",
                      f"teacher.checkpoint={tmp_path / 'nowhere'}"])
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "r").exists()   # nothing was written


def test_training_split_smaller_than_the_batch_fails_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"training split has \d+ windows, fewer than data.batch_size=512"):
        distill.main(["--config", "configs/synthetic_smoke.yaml", f"run_dir={tmp_path / 'r'}", "data.batch_size=512"])
    assert not (tmp_path / "r" / "teacher").exists() and not (tmp_path / "r" / "state").exists()
