"""Teacher health figures on hand-made inputs: each metric's value where it is known exactly."""
import math

import pytest
import torch

from teachers.health import (collapse_reasons, distinct_shapes, pooled_r2, r2_rows, short_teacher_training, slot_std,
                             span_coverage, token_spread, usage_perplexity)


def test_identical_shapes_are_one_cluster_whatever_their_scale_and_offset():
    base = torch.sin(torch.linspace(0, 6, 64))
    shapes = torch.stack([base, 3 * base + 1, 0.1 * base - 2])
    assert distinct_shapes(shapes, torch.tensor([5, 1, 2])) == 1


def test_distinct_shapes_counts_uncorrelated_and_anticorrelated_shapes_apart():
    x = torch.linspace(0, 1, 128)
    shapes = torch.stack([torch.sin(2 * math.pi * x), torch.cos(2 * math.pi * x), -torch.sin(2 * math.pi * x),
                          x, torch.sin(2 * math.pi * x) + 0.01 * torch.cos(2 * math.pi * x)])
    # sin ~ its slightly perturbed copy (r > 0.9); cos, -sin and the ramp are separate
    assert distinct_shapes(shapes, torch.tensor([1, 1, 1, 1, 1])) == 4


def test_distinct_shapes_threshold_is_strict_and_leaders_follow_usage():
    a = torch.tensor([1.0, 0.0, -1.0, 0.0])
    b = torch.tensor([1.0, 0.2, -1.0, -0.2])                            # r(a, b) = 1 / sqrt(1.04) ~ 0.981
    r = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    assert distinct_shapes(torch.stack([a, b]), torch.tensor([1, 1]), r=r - 1e-6) == 1
    assert distinct_shapes(torch.stack([a, b]), torch.tensor([1, 1]), r=r + 1e-6) == 2


def test_fixed_spans_have_zero_std_and_moving_spans_do_not():
    t = torch.tensor([[0.1, 0.5]]).expand(10, 2)
    assert slot_std(t) == 0.0
    moving = torch.stack([torch.linspace(0, 0.9, 10), torch.full((10,), 0.5)], dim=1)
    assert slot_std(moving) == pytest.approx(float(torch.linspace(0, 0.9, 10).std(unbiased=False)) / 2)


def test_span_coverage_on_hand_made_spans():
    T = 101                                                             # step i at i / 100
    t = torch.tensor([[0.0, 0.5]])
    l = torch.tensor([[0.2, 0.1]])                                     # [0, .2] and [.5, .6]: 21 + 11 steps
    assert span_coverage(t, l, T) == pytest.approx(32 / 101)
    assert span_coverage(torch.zeros(3, 1), torch.ones(3, 1), T) == 1.0
    # a span running past the end is clipped at 1
    assert span_coverage(torch.tensor([[0.9]]), torch.tensor([[0.5]]), T) == pytest.approx(11 / 101)


def test_perfect_reconstruction_scores_one_and_the_series_mean_scores_zero():
    x = torch.randn(4, 50) * torch.tensor([[1.0], [5.0], [0.1], [2.0]]) + 3
    assert pooled_r2(x, x) == 1.0
    assert pooled_r2(x.mean(-1, keepdim=True).expand_as(x), x) == pytest.approx(0.0, abs=1e-9)
    assert torch.allclose(r2_rows(x, x), torch.ones(4))
    assert torch.allclose(r2_rows(x.mean(-1, keepdim=True).expand_as(x), x), torch.zeros(4), atol=1e-6)


def test_perplexity_of_uniform_usage_is_the_number_of_codes_used():
    assert usage_perplexity(torch.tensor([5, 5, 0, 5, 5])) == pytest.approx(4.0)
    assert usage_perplexity(torch.tensor([0, 9, 0])) == pytest.approx(1.0)


def test_collapse_reasons_name_every_figure_under_its_limit():
    # the default teacher of a fresh `make run` (tiling spans: they barely move, by design) is healthy
    default = {"distinct_shapes": 32, "shape_fit_r2": 0.905, "recon_r2": 0.839, "span_t_std": 1.24e-05,
               "span_coverage": 0.92}
    assert collapse_reasons(default) == []
    # a collapsed one (one shape that fits nothing, a reconstruction near the mean) is named on each figure
    bad = {**default, "distinct_shapes": 1, "shape_fit_r2": -2.2, "recon_r2": 0.05}
    reasons = collapse_reasons(bad)
    assert [r.split("=")[0] for r in reasons] == ["distinct_shapes", "shape_fit_r2", "recon_r2"]
    assert collapse_reasons({**default, "shape_fit_r2": 0.1}) == [
        "shape_fit_r2=0.1 < 0.3: the decoded shapes do not fit their subsequences"]


# ----------------------------------------------------------------------------- a short training
# The default teacher of configs/default.yaml, made small; and two earlier teachers for the negative
# controls: codes from a head on the token (the official model; the default until section 4 of
# experiments/teacher_health.md), and the teacher before the health work.
TOKEN_CODES = ["teacher.vqshape.code_input=token", "teacher.vqshape.span_init=none",
               "teacher.vqshape.decoder_input=tokens"]
OLD_TEACHER = [*TOKEN_CODES, "teacher.vqshape.pos_init_std=0.02", "teacher.vqshape.loss_scale=input",
               "teacher.vqshape.decoder_cls_token=false", "teacher.vqshape.head_detach=false",
               "teacher.vqshape.lambda_shape_norm=0"]
LEARNED = {"distinct_shapes": 8, "shape_fit_r2": 0.3, "recon_r2": 0.3}


def learned(report) -> bool:
    return all(report[k] >= v for k, v in LEARNED.items())


def test_short_training_learns_distinct_shapes_that_fit_and_reconstruct(tmp_path):
    """The default teacher (configs/default.yaml), trained 300 steps on generated windows, must learn
    several distinct shapes that fit their subsequences and a reconstruction better than the mean.
    (Measured with the hand-written loop this harness had until edeba7c, seed 0, routing by span overlap: 35
    distinct shapes, shape fit 0.55, recon 0.62, by patch centres: 38, 0.61, 0.53; token codes: 1, -2.2, 0.48.
    Since, the harness trains through the teacher stage of kd.stages; the controls below still fail.)"""
    report = short_teacher_training([], tmp_path)
    assert learned(report) and report["codes_used"] >= 8, report


@pytest.mark.control
@pytest.mark.parametrize("overrides", [TOKEN_CODES, OLD_TEACHER], ids=["token_codes", "old_teacher"])
def test_earlier_teachers_fail_the_same_thresholds(overrides, tmp_path):
    """The thresholds above can fail: earlier teachers stay under them. A negative control of a few
    minutes on 2 cores, outside the default run: `pytest -m control`."""
    report = short_teacher_training(overrides, tmp_path)
    assert not learned(report), report


def test_token_spread_is_zero_for_the_same_tokens_and_scale_free():
    h = torch.randn(1, 4, 3).expand(5, 4, 3)
    assert token_spread(h) == 0.0
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2000, 4, 3, generator=g)                 # zero mean, unit std: std / rms = 1
    assert abs(token_spread(h) - 1.0) < 0.05 and abs(token_spread(10 * h) - token_spread(h)) < 1e-6
    assert abs(token_spread(h + 3.0) - 1 / math.sqrt(10)) < 0.02  # an offset common to all series only adds to the rms
