"""The weight average (train.ema, kd/engine.py WeightAverage): the analytic update with its warm-up,
counters copied not averaged, the model's own weights back after validation, validation and the kept
weights being the averaged ones, and an interrupted stage resuming with its average."""
import torch
import torch.nn as nn

from kd.config import ConfigError, load_config
from kd.engine import StageSpec, WeightAverage, fit
from kd.stages import make_accelerator
from test_selection import ScriptedTask, ValData

import pytest


def decay_at(t, decay):
    return min(decay, (1 + t) / (10 + t))


def test_update_is_the_warmed_up_moving_average_and_counters_are_copied():
    model = nn.BatchNorm1d(1)
    avg = WeightAverage(model, decay=0.5)
    expected = model.weight.detach().clone()
    for t, w in enumerate([2.0, -1.0, 4.0, 0.5], start=1):
        with torch.no_grad():
            model.weight.fill_(w)
        model.num_batches_tracked.fill_(10 * t)
        avg.update()
        d = decay_at(t, 0.5)                  # 2/11, 3/12, 4/13, then 0.5
        expected = d * expected + (1 - d) * w
        assert torch.allclose(avg.shadow["weight"], expected)
        assert int(avg.shadow["num_batches_tracked"]) == 10 * t
    with avg.averaged():
        assert torch.allclose(model.weight, expected)
    assert float(model.weight.detach()) == 0.5                                   # its own weights again


class RecordingTask(ScriptedTask):
    """Also records w at every training forward: the weights after each optimizer step."""

    def __init__(self, quality):
        super().__init__(quality)
        self.trained = []

    def forward(self, batch, t_out=None):
        self.trained.append(float(self.w.detach()))
        return super().forward(batch, t_out)


def ema_fit(tmp_path, epochs, resume=False, task=None):
    cfg = load_config(overrides=["data.batch_size=4", "data.eval_batch_size=8", "train.grad_clip=0",
                                 "train.warmup_steps=1", f"resume={str(resume).lower()}"])
    task = task or RecordingTask([8] * 8)
    summary = fit(make_accelerator(cfg), cfg, StageSpec("toy", epochs, 1e-1, select="last", ema=0.9), task,
                  ValData(), ValData(), ["even", "odd"], tmp_path)
    return task, summary


def average_of(trained, decay=0.9, start=0.0, first_update=1):
    a = start
    for t, w in enumerate(trained, start=first_update):
        d = decay_at(t, decay)
        a = d * a + (1 - d) * w
    return a


def test_validation_and_the_kept_weights_are_the_average(tmp_path):
    task, summary = ema_fit(tmp_path, epochs=3)                         # 2 steps per epoch
    w = task.trained                                                    # w0 (init) .. w5: weights before each step
    assert task.seen[0] == pytest.approx(average_of(w[1:3]), abs=1e-6)  # after epoch 1: steps 1-2
    assert task.seen[1] == pytest.approx(average_of(w[1:5]), abs=1e-6)
    assert float(task.w.detach()) == task.seen[-1]                      # the stage ends with the average
    assert abs(task.seen[-1] - w[-1]) > 1e-3                            # ... which is not the raw weights


def test_a_resumed_stage_keeps_its_average(tmp_path):
    first, _ = ema_fit(tmp_path, epochs=2)
    a4 = first.seen[-1]
    second, _ = ema_fit(tmp_path, epochs=4, resume=True)
    w = second.trained                                                  # w4 (loaded raw), w5, w6, w7
    assert second.seen[0] == pytest.approx(average_of(w[1:3], start=a4, first_update=5), abs=1e-6)


def test_a_decay_outside_0_1_fails_at_load():
    with pytest.raises(ConfigError, match=r"train.ema=1.0 must lie in \[0, 1\)"):
        load_config(overrides=["train.ema=1.0"])
