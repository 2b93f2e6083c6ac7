"""KD losses against hand-computed values and their invariants."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kd.config import LossConfig
from kd.losses import (build_loss, check_outputs, action_kl_loss, attr_loss, code_kl_loss, feature_hint_loss,
                       logit_kd_loss, sp_loss)


def np_kl(p, q):
    return float(np.sum(p * (np.log(p) - np.log(q)), axis=-1).mean())


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_logit_kd_zero_for_identical_logits_and_hand_value():
    z = torch.randn(5, 7)
    assert logit_kd_loss(z, z.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)
    # two classes, T = 2: t = [0, 0] -> p = [.5, .5]; s = [2, 0] -> q = softmax([1, 0])
    s, t = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    q1 = 1 / (1 + math.exp(-1.0))
    expected = 4 * (0.5 * math.log(0.5 / q1) + 0.5 * math.log(0.5 / (1 - q1)))
    assert logit_kd_loss(s, t, 2.0).item() == pytest.approx(expected, rel=1e-6)


def test_logit_kd_t_squared_scaling():
    torch.manual_seed(0)
    s, t = torch.randn(8, 5), torch.randn(8, 5)
    for T in (1.0, 3.0, 8.0):
        direct = T * T * np_kl(softmax(t.numpy() / T), softmax(s.numpy() / T))
        assert logit_kd_loss(s, t, T).item() == pytest.approx(direct, rel=1e-5)
    # T^2 makes the loss T-independent at high temperature: T^2 KL -> mean_b ||d_b - mean(d_b)||^2 / (2 n)
    d = s - t
    limit = ((d - d.mean(-1, keepdim=True)) ** 2).sum(-1).mean() / (2 * d.shape[-1])
    assert logit_kd_loss(s, t, 200.0).item() == pytest.approx(limit.item(), rel=1e-2)
    assert logit_kd_loss(s, t, 400.0).item() == pytest.approx(logit_kd_loss(s, t, 200.0).item(), rel=1e-2)


def test_code_and_action_kl_match_numpy_and_vanish_on_identity():
    torch.manual_seed(1)
    d_s, d_t = torch.rand(2, 3, 6) * 4, torch.rand(2, 3, 6) * 4
    assert code_kl_loss(d_t, d_t.clone(), 0.5).item() == pytest.approx(0.0, abs=1e-6)
    ref = np_kl(softmax(-d_t.numpy() / 0.5), softmax(-d_s.numpy() / 0.5))
    assert code_kl_loss(d_s, d_t, 0.5).item() == pytest.approx(ref, rel=1e-5)
    a_s, a_t = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    assert action_kl_loss(a_t, a_t.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert action_kl_loss(a_s, a_t).item() == pytest.approx(np_kl(softmax(a_t.numpy()), softmax(a_s.numpy())), rel=1e-5)


def test_attr_loss_weights():
    ones = {k: torch.ones(1, 2, 1) for k in ("mu", "sigma", "t", "l")}
    s = {"z_e": torch.zeros(1, 2, 3), **ones}
    t = {"z_e": torch.ones(1, 2, 3), **{k: v * 3 for k, v in ones.items()}}   # squared errors: z 1, others 4
    w = {"z_e": 2.0, "mu": 1.0, "sigma": 0.0, "t": 0.5, "l": 0.0}
    assert attr_loss(s, t, w).item() == pytest.approx(2 * 1 + 1 * 4 + 0.5 * 4)
    with pytest.raises(ValueError, match="unknown attributes.*valid"):
        attr_loss(s, t, {"zz": 1.0})


def test_feature_hint_and_sp():
    f = torch.randn(3, 4, 10)
    g = torch.randn(3, 4, 10)
    assert feature_hint_loss(f, g).item() == pytest.approx(F.mse_loss(f, g).item())
    # length mismatch: the student side is resampled to the teacher's length
    assert feature_hint_loss(torch.ones(2, 4, 5), torch.ones(2, 4, 9)).item() == pytest.approx(0.0, abs=1e-7)
    assert sp_loss(f, f.clone()).item() == pytest.approx(0.0, abs=1e-7)
    assert sp_loss(f, g).item() == pytest.approx(sp_loss(3.0 * f, g).item(), rel=1e-5)   # scale invariant
    a, b = f.reshape(3, -1).numpy(), g.reshape(3, -1).numpy()
    ga, gb = a @ a.T, b @ b.T
    ga /= np.linalg.norm(ga, axis=1, keepdims=True)
    gb /= np.linalg.norm(gb, axis=1, keepdims=True)
    assert sp_loss(f, g).item() == pytest.approx(float(((ga - gb) ** 2).sum() / 9), rel=1e-5)


def test_modules_weight_and_detach_teacher():
    torch.manual_seed(0)
    s = {"logits": torch.randn(4, 3, requires_grad=True)}
    t = {"logits": torch.randn(4, 3, requires_grad=True)}
    m1 = build_loss("logit_kd", LossConfig(weight=1.0, temperature=2.0), {}, {})
    m3 = build_loss("logit_kd", LossConfig(weight=3.0, temperature=2.0), {}, {})
    v1, v3 = m1(s, t)["logit_kd"], m3(s, t)["logit_kd"]
    assert v3.item() == pytest.approx(3 * v1.item())
    v3.backward()
    assert s["logits"].grad is not None and t["logits"].grad is None


def test_feature_module_projector_learns_and_checks_outputs():
    m = build_loss("feature", LossConfig(weight=1.0), {"feature_dim": 8, "feature_len": 16},
                   {"feature_dim": 4, "feature_len": 12})
    out = m({"features": torch.randn(2, 8, 16)}, {"features": torch.randn(2, 4, 12)})["feature"]
    out.backward()
    assert m.proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="kd.action_kl needs 'action_logits' from the teacher"):
        check_outputs(["action_kl"], {"action_logits"}, {"logits"})
    with pytest.raises(ValueError, match="unknown KD loss 'foo'; known"):
        build_loss("foo", LossConfig(), {}, {})


def test_losses_finite_on_bf16_inputs():
    s = torch.randn(4, 6, 5, dtype=torch.bfloat16) * 30
    t = torch.randn(4, 6, 5, dtype=torch.bfloat16) * 30
    for v in (code_kl_loss(s.abs(), t.abs(), 0.01), action_kl_loss(s, t), logit_kd_loss(s[:, 0], t[:, 0], 4.0),
              sp_loss(s, t)):
        assert torch.isfinite(v) and v.dtype == torch.float32
