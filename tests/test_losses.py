"""KD losses against hand-computed values, direct numpy references and their invariants."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kd.config import AttrLossConfig, LossConfig, TemperatureLossConfig
from kd.outputs import Outputs
from kd.losses import (LOSSES, action_kl_loss, attr_loss, build_loss, code_kl_loss,
                       feature_hint_loss, logit_kd_loss, sp_loss, sub_kl_loss)

B, G, DC, K, M, N_CLS = 3, 4, 2, 5, 6, 7
DIMS_S, DIMS_T = {"feature_dim": 8, "feature_len": 10}, {"feature_dim": 5, "feature_len": 6}
ATTR = ("z_e", "mu", "sigma", "t", "l")


def np_kl(p, q):
    """KL(p || q) over the last axis, mean over the rest."""
    return float(np.sum(p * (np.log(p) - np.log(q)), axis=-1).mean())


def softmax(x):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def fake_out(dims, seed, dtype=torch.float32, grad=False):
    """One model's outputs as the loss modules read them."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape, scale=1.0: (torch.randn(*shape, generator=g) * scale).to(dtype).requires_grad_(grad)
    return Outputs(logits=r(B, N_CLS, scale=3.0),
                   attr={"z_e": r(B, G, DC), **{a: r(B, G, 1) for a in ATTR[1:]}},
                   code_dist=(torch.rand(B, G, K, generator=g) * 4).to(dtype).requires_grad_(grad),
                   action_logits=r(B, G, M, scale=2.0),
                   sub_logits=r(B, G, M, scale=2.0),
                   features=r(B, dims["feature_dim"], dims["feature_len"]))


def leaves(out):
    return list(out.tensors().values())


def cfg_for(name, weight=1.0):
    if name == "attr":
        return AttrLossConfig(weight=weight)
    if name in ("logit_kd", "code_kl"):
        return TemperatureLossConfig(weight=weight, temperature=2.0 if name == "logit_kd" else 0.5)
    return LossConfig(weight=weight)


# --------------------------------------------------------------------------- logit KD
def test_logit_kd_zero_for_identical_logits_and_two_class_hand_value():
    z = torch.randn(5, 7) * 3
    assert logit_kd_loss(z, z.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)
    # T = 2: teacher [0, 0] -> p = [1/2, 1/2]; student [2, 0] -> q = softmax([1, 0]) = [sigma(1), 1 - sigma(1)]
    # T^2 KL = 4 * (0.5 ln(0.5/0.7310586) + 0.5 ln(0.5/0.2689414)) = 4 * 0.1201145 = 0.4804578
    s, t = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    assert logit_kd_loss(s, t, 2.0).item() == pytest.approx(0.4804578, abs=1e-6)
    # batchmean: a second, identical-logit row halves the mean
    s2, t2 = torch.tensor([[2.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert logit_kd_loss(s2, t2, 2.0).item() == pytest.approx(0.4804578 / 2, abs=1e-6)


def test_logit_kd_matches_direct_computation_and_t_squared_scaling():
    torch.manual_seed(0)
    s, t = torch.randn(8, 5) * 2, torch.randn(8, 5) * 2
    for T in (1.0, 3.0, 8.0):
        direct = T * T * np_kl(softmax(t.numpy() / T), softmax(s.numpy() / T))
        assert logit_kd_loss(s, t, T).item() == pytest.approx(direct, rel=1e-5)
    # Soft teacher, small student offset: KL ~ Var_p(d) / (2 T^2), so T^2 KL barely depends on T.
    t0 = torch.zeros(16, 5)
    s0 = t0 + 0.05 * torch.randn(16, 5)
    assert logit_kd_loss(s0, t0, 4.0).item() / logit_kd_loss(s0, t0, 1.0).item() == pytest.approx(1.0, abs=0.02)
    # Confident teacher: T^2 does NOT make it T-independent (p_T flattens with T) -- measured ratio ~3.3.
    t3 = 3 * torch.randn(16, 5)
    s3 = t3 + 0.05 * torch.randn(16, 5)
    assert logit_kd_loss(s3, t3, 4.0).item() / logit_kd_loss(s3, t3, 1.0).item() > 1.5
    # What T^2 guarantees in general: a finite high-T limit, T^2 KL -> mean_b ||d_b - mean(d_b)||^2 / (2 n).
    d = s - t
    limit = ((d - d.mean(-1, keepdim=True)) ** 2).sum(-1).mean() / (2 * d.shape[-1])
    assert logit_kd_loss(s, t, 200.0).item() == pytest.approx(limit.item(), rel=1e-2)


def test_logit_kd_rejects_mismatched_classes_and_bad_temperature():
    with pytest.raises(ValueError, match="logit_kd: student logits"):
        logit_kd_loss(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)
    with pytest.raises(ValueError, match="temperature=0"):
        build_loss("logit_kd", TemperatureLossConfig(weight=1.0, temperature=0.0), {}, {})


# --------------------------------------------------------------------------- code / action KL
def test_code_kl_matches_numpy_and_vanishes_on_identity():
    torch.manual_seed(1)
    d_s, d_t = torch.rand(2, 3, 6) * 4, torch.rand(2, 3, 6) * 4
    assert code_kl_loss(d_t, d_t.clone(), 0.5).item() == pytest.approx(0.0, abs=1e-6)
    ref = np_kl(softmax(-d_t.numpy() / 0.5), softmax(-d_s.numpy() / 0.5))   # softmin = softmax(-d)
    assert code_kl_loss(d_s, d_t, 0.5).item() == pytest.approx(ref, rel=1e-5)
    assert code_kl_loss(d_s, d_t, 0.5).item() == pytest.approx(code_kl_loss(d_s / 0.5, d_t / 0.5, 1.0).item(), rel=1e-5)
    # far-away codes and a sharp tau: log-softmax keeps it finite (a naive softmin would give 0 * log 0)
    far = code_kl_loss(d_s * 1e4, d_t * 1e4, 0.01)
    assert torch.isfinite(far) and far.item() >= 0


def test_action_kl_matches_numpy_and_vanishes_on_identity():
    torch.manual_seed(2)
    a_s, a_t = torch.randn(2, 3, 4) * 2, torch.randn(2, 3, 4) * 2
    assert action_kl_loss(a_t, a_t.clone()).item() == pytest.approx(0.0, abs=1e-6)
    ref = np_kl(softmax(a_t.numpy()), softmax(a_s.numpy()))
    assert action_kl_loss(a_s, a_t).item() == pytest.approx(ref, rel=1e-5)
    assert action_kl_loss(a_s, a_t).item() != pytest.approx(action_kl_loss(a_t, a_s).item(), rel=1e-3)  # direction
    with pytest.raises(ValueError, match="action_kl: student action_logits"):
        action_kl_loss(torch.zeros(2, 3, 4), torch.zeros(2, 1, 4))   # would silently broadcast otherwise


def test_sub_kl_is_the_token_kl_of_the_label_free_scores():
    """sub_kl: the same per-token KL as action_kl, over the whole vocabulary, named after its own field."""
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 5, 7, generator=g) * 2, torch.randn(2, 5, 7, generator=g) * 2
    ref = np_kl(softmax(t.numpy()), softmax(s.numpy()))
    assert sub_kl_loss(s, t).item() == pytest.approx(ref, rel=1e-5)
    assert sub_kl_loss(t, t.clone()).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="sub_kl: student sub_logits"):
        sub_kl_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5))


# --------------------------------------------------------------------------- attributes
def test_attr_loss_per_attribute_weights():
    ones = {k: torch.ones(1, 2, 1) for k in ATTR[1:]}
    s = {"z_e": torch.zeros(1, 2, 3), **ones}
    t = {"z_e": torch.ones(1, 2, 3), **{k: v * 3 for k, v in ones.items()}}   # squared errors: z_e 1, others 4
    w = {"z_e": 2.0, "mu": 1.0, "sigma": 0.0, "t": 0.5, "l": 0.0}
    assert attr_loss(s, t, w).item() == pytest.approx(2 * 1 + 1 * 4 + 0.5 * 4)
    assert attr_loss(s, t, {"mu": 1.0}).item() == pytest.approx(4.0)        # a subset of attributes is fine


def test_attr_zero_weight_drops_the_term_exactly():
    s = {a: torch.randn(2, 3, 2 if a == "z_e" else 1, requires_grad=True) for a in ATTR}
    t = {a: torch.randn_like(v) for a, v in s.items()}
    w = {"z_e": 1.0, "mu": 1.0, "sigma": 0.0, "t": 1.0, "l": 1.0}
    clean = attr_loss(s, t, w).item()
    t_bad = {**t, "sigma": torch.full_like(t["sigma"], float("nan"))}     # garbage in the dropped attribute
    loss = attr_loss(s, t_bad, w)
    assert loss.item() == clean
    loss.backward()
    assert s["sigma"].grad is None and s["mu"].grad is not None
    no_sigma = {k: v for k, v in s.items() if k != "sigma"}                 # not even read
    assert attr_loss(no_sigma, t, w).item() == pytest.approx(clean)


def test_attr_errors_name_what_to_fix():
    s = {a: torch.zeros(1, 2, 1) for a in ATTR}
    with pytest.raises(ValueError, match=r"unknown attributes \['zz'\]; valid: \['z_e', 'mu', 'sigma', 't', 'l'\]"):
        attr_loss(s, s, {"zz": 1.0})
    with pytest.raises(ValueError, match="unknown attributes"):            # at construction, before training
        build_loss("attr", AttrLossConfig(weight=1.0, attr_weights={"mu": 1.0, "sgima": 1.0}), {}, {})
    with pytest.raises(ValueError, match="all 0"):
        build_loss("attr", AttrLossConfig(weight=1.0, attr_weights={a: 0.0 for a in ATTR}), {}, {})
    with pytest.raises(ValueError, match="teacher attributes lack 'l'"):
        attr_loss(s, {a: s[a] for a in ATTR[:-1]}, {"l": 1.0})
    with pytest.raises(ValueError, match="student mu"):
        attr_loss(s, {**s, "mu": torch.zeros(1, 4, 1)}, {"mu": 1.0})


# --------------------------------------------------------------------------- feature hint
def test_feature_hint_identity_projector_is_plain_mse():
    f, g = torch.randn(3, 4, 10), torch.randn(3, 4, 10)
    assert feature_hint_loss(f, g).item() == pytest.approx(F.mse_loss(f, g).item(), rel=1e-6)
    m = build_loss("feature", LossConfig(weight=1.0), {"feature_dim": 4, "feature_len": 10},
                   {"feature_dim": 4, "feature_len": 10})
    with torch.no_grad():
        m.proj.weight.copy_(torch.eye(4).unsqueeze(-1))
        m.proj.bias.zero_()
    s_out, t_out = Outputs(f[:, 0, 0], features=f), Outputs(g[:, 0, 0], features=g)
    assert m(s_out, t_out)["feature"].item() == pytest.approx(F.mse_loss(f, g).item(), rel=1e-6)


def test_feature_hint_interpolates_student_length_to_teacher():
    # linear, align_corners=False, 2 -> 4 samples: positions -0.25, 0.25, 0.75, 1.25 (clamped) -> [0, .25, .75, 1]
    s = torch.tensor([[[0.0, 1.0]]])
    assert feature_hint_loss(s, torch.tensor([[[0.0, 0.25, 0.75, 1.0]]])).item() == pytest.approx(0.0, abs=1e-7)
    assert feature_hint_loss(s, torch.zeros(1, 1, 4)).item() == pytest.approx((0.0625 + 0.5625 + 1.0) / 4)
    with pytest.raises(ValueError, match="must agree in"):
        feature_hint_loss(torch.zeros(2, 3, 4), torch.zeros(2, 5, 4))


def test_feature_projector_learns():
    m = build_loss("feature", LossConfig(weight=1.0), DIMS_S, DIMS_T)
    assert tuple(m.proj.weight.shape) == (DIMS_T["feature_dim"], DIMS_S["feature_dim"], 1)
    m(fake_out(DIMS_S, 0), fake_out(DIMS_T, 1))["feature"].backward()
    assert m.proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="teacher's feature_dim"):
        build_loss("feature", LossConfig(weight=1.0), DIMS_S, {})


# --------------------------------------------------------------------------- similarity preserving
def test_sp_loss_zero_scale_invariant_and_matches_numpy():
    torch.manual_seed(3)
    f, g = torch.randn(3, 4, 10), torch.randn(3, 6, 7)                    # dims may differ, B may not
    assert sp_loss(f, f.clone()).item() == pytest.approx(0.0, abs=1e-7)
    assert sp_loss(f, 5.0 * f).item() == pytest.approx(0.0, abs=1e-7)
    v = sp_loss(f, g).item()
    assert v > 1e-3
    assert sp_loss(3.0 * f, 0.2 * g).item() == pytest.approx(v, rel=1e-5)
    a, b = f.reshape(3, -1).numpy().astype(np.float64), g.reshape(3, -1).numpy().astype(np.float64)
    ga, gb = a @ a.T, b @ b.T
    ga /= np.linalg.norm(ga, axis=1, keepdims=True)
    gb /= np.linalg.norm(gb, axis=1, keepdims=True)
    assert v == pytest.approx(float(((ga - gb) ** 2).sum() / 3 ** 2), rel=1e-5)
    with pytest.raises(ValueError, match="batch"):
        sp_loss(f, g[:2])


# --------------------------------------------------------------------------- modules
def test_registry_and_requires():
    assert set(LOSSES) == {"logit_kd", "attr", "code_kl", "action_kl", "sub_kl", "feature", "sp"}
    assert {n: c.requires for n, c in LOSSES.items()} == {
        "logit_kd": ("logits",), "attr": ("attr",), "code_kl": ("code_dist",),
        "action_kl": ("action_logits",), "sub_kl": ("sub_logits",), "feature": ("features",),
        "sp": ("features",)}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_module_term_is_weighted_and_grads_reach_only_the_student(name):
    s_out, t_out = fake_out(DIMS_S, 0, grad=True), fake_out(DIMS_T, 1, grad=True)
    torch.manual_seed(0)
    m1 = build_loss(name, cfg_for(name, 1.0), DIMS_S, DIMS_T)
    torch.manual_seed(0)                                                   # same projector init for feature
    m3 = build_loss(name, cfg_for(name, 3.0), DIMS_S, DIMS_T)
    out1, out3 = m1(s_out, t_out), m3(s_out, t_out)
    assert list(out1) == [name] and out1[name].dim() == 0
    assert out1[name].item() > 0
    assert out3[name].item() == pytest.approx(3 * out1[name].item(), rel=1e-6)
    out3[name].backward()
    s_used = [s_out.get(k) for k in LOSSES[name].requires if k != "attr"] or list(s_out.attr.values())
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s_used)
    assert all(x.grad is None for x in leaves(t_out))                      # the teacher is detached


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_module_finite_fp32_under_bf16_autocast(name):
    s_out, t_out = fake_out(DIMS_S, 0, torch.bfloat16), fake_out(DIMS_T, 1, torch.bfloat16)
    m = build_loss(name, cfg_for(name), DIMS_S, DIMS_T)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v = m(s_out, t_out)[name]
    assert torch.isfinite(v) and v.dtype == torch.float32


def test_pure_functions_compute_in_fp32_under_autocast():
    """bf16 inputs under bf16 autocast give the fp32 result of the same (upcast) inputs: no bf16 matmul/softmax."""
    s, t = fake_out(DIMS_T, 0, torch.bfloat16), fake_out(DIMS_T, 1, torch.bfloat16)
    calls = {
        "logit_kd": lambda o, p: logit_kd_loss(o.logits, p.logits, 4.0),
        "code_kl": lambda o, p: code_kl_loss(o.code_dist, p.code_dist, 0.1),
        "action_kl": lambda o, p: action_kl_loss(o.action_logits, p.action_logits),
        "sub_kl": lambda o, p: sub_kl_loss(o.sub_logits, p.sub_logits),
        "attr": lambda o, p: attr_loss(o.attr, p.attr, {a: 1.0 for a in ATTR}),
        "feature": lambda o, p: feature_hint_loss(o.features[..., :4], p.features),   # with interpolation
        "sp": lambda o, p: sp_loss(o.features, p.features),
    }
    up = lambda o: Outputs.from_tensors({k: v.float() for k, v in o.tensors().items()})
    for name, f in calls.items():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            v = f(s, t)
        assert v.dtype == torch.float32, name
        assert v.item() == pytest.approx(f(up(s), up(t)).item(), rel=1e-5), name


def test_losses_finite_on_extreme_fp16_inputs():
    big = torch.tensor([[6e4, -6e4, 0.0]], dtype=torch.float16)
    assert torch.isfinite(logit_kd_loss(big, big.flip(-1), 1.0))
    assert torch.isfinite(action_kl_loss(big[None], big.flip(-1)[None]))
    assert torch.isfinite(code_kl_loss(big.abs()[None], big.abs().flip(-1)[None], 0.01))
    assert torch.isfinite(sp_loss(torch.full((2, 300), 200.0, dtype=torch.float16),
                                  torch.randn(2, 300).half()))              # fp16 Gram would overflow


def test_build_loss_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="unknown KD loss 'foo'") as err:
        build_loss("foo", LossConfig(), {}, {})
    assert all(repr(n) in str(err.value) for n in LOSSES)
