"""VQShape teacher: formulas on hand-made inputs, shapes, gradient paths, exactness of the
decode-once shape decoder, freezing and checkpoint round trips."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kd.checkpoint import CheckpointError, load_weights, read_checkpoint, save_model
from kd.config import AlignmentConfig, FusionConfig, VQShapeConfig
from teachers.mmvqshape import MMVQShape, kl_rows, supcon_loss
from kd.vqshape import (ShapeCodebook, ShapeDecoder, VQShape, disentangle_loss, extract_subsequence,
                        instance_norm)

TINY = dict(dim=32, enc_layers=1, enc_heads=4, tok_layers=1, tok_heads=4, dec_layers=1, dec_heads=4,
            num_token=8, num_code=16, len_s=32, head_hidden=16)


def tiny_cfg(**kw):
    return VQShapeConfig(**{**TINY, **kw})


def text_tensors(n_cls=3, M=5, K=3, Dt=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"vocab_emb": F.normalize(torch.randn(M, Dt, generator=g), dim=-1),
            "class_index": torch.tensor([[0, 1, 2], [2, 3, -1], [4, 0, 1]])[:n_cls, :K],
            "class_mask": torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)[:n_cls, :K],
            "label_emb": torch.randn(n_cls, Dt, generator=g)}


# ----------------------------------------------------------------------------- codebook
def test_codebook_nearest_code_straight_through_and_loss_value():
    cb = ShapeCodebook(3, 2, beta=0.25, lambda_entropy=0.0, entropy_gamma=1.0, entropy_temp=0.01)
    with torch.no_grad():
        cb.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]))
    z = torch.tensor([[0.9, 0.1], [0.1, 1.5]], requires_grad=True)
    z_q, idx, loss, d = cb(z)
    assert idx.tolist() == [1, 2]
    assert torch.equal(z_q.detach(), torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    # mean((sg[z_q]-z)^2) + beta*mean((z_q-sg[z])^2) = 1.25 * mean of squared residuals
    sq = ((0.1 ** 2 + 0.1 ** 2) + (0.1 ** 2 + 0.5 ** 2)) / 4
    assert loss.item() == pytest.approx(1.25 * sq, rel=1e-6)
    assert torch.allclose(d, torch.cdist(z, cb.weight).pow(2), atol=1e-6)
    z_q.sum().backward()                                     # straight-through: dz_q/dz = I
    assert torch.allclose(z.grad, torch.ones_like(z))


def test_codebook_gradients_split_between_encoder_and_codes():
    cb = ShapeCodebook(2, 1, beta=0.25, lambda_entropy=0.0, entropy_gamma=1.0, entropy_temp=0.01)
    with torch.no_grad():
        cb.weight.copy_(torch.tensor([[0.0], [4.0]]))
    z = torch.tensor([[1.0]], requires_grad=True)
    _, _, loss, _ = cb(z)
    loss.backward()
    assert z.grad.item() == pytest.approx(2 * (1.0 - 0.0))             # commitment pulls z to its code
    assert cb.weight.grad[0].item() == pytest.approx(0.25 * 2 * (0.0 - 1.0))  # beta term moves the code
    assert cb.weight.grad[1].item() == 0.0


def test_entropy_term_rewards_spread_usage():
    """H(p) per token low and H(mean p) high is lower loss: spread codes beat one code for all."""
    cb = ShapeCodebook(2, 1, beta=0.0, lambda_entropy=1.0, entropy_gamma=1.0, entropy_temp=0.01)
    with torch.no_grad():
        cb.weight.copy_(torch.tensor([[0.0], [1.0]]))
    spread = torch.tensor([[0.0], [1.0]])
    collapsed = torch.tensor([[0.0], [0.0]])
    l_spread = cb(spread)[2].item()
    l_collapsed = cb(collapsed)[2].item()
    # both are confident per token (H(p) ~ 0); spread has H(mean p) = log 2
    assert l_spread == pytest.approx(-math.log(2), abs=1e-3)
    assert l_collapsed == pytest.approx(0.0, abs=1e-3)


# ----------------------------------------------------------------------------- helpers
def test_instance_norm_uses_unbiased_variance():
    x = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    xn, mean, std = instance_norm(x)
    assert mean.item() == pytest.approx(3.0)
    assert std.item() == pytest.approx(math.sqrt(np.var([1, 2, 3, 6], ddof=1) + 1e-5))
    assert torch.allclose(xn, (x - 3.0) / std)


def test_extract_subsequence_matches_direct_interpolation():
    torch.manual_seed(0)
    x = torch.randn(3, 100)
    t = torch.tensor([0.0, 0.3, 0.9]).view(3, 1, 1).expand(3, 2, 1).contiguous()
    l = torch.tensor([0.5, 0.2, 0.4]).view(3, 1, 1).expand(3, 2, 1).contiguous()
    s = extract_subsequence(x, t, l, 17)
    for b in range(3):
        start, end = t[b, 0, 0].item() * 99, min(t[b, 0, 0].item() + l[b, 0, 0].item(), 1.0) * 99
        ref = np.interp(np.linspace(start, end, 17), np.arange(100), x[b].numpy())
        assert np.allclose(s[b, 0].numpy(), ref, atol=1e-5)
        assert torch.equal(s[b, 0], s[b, 1])


def test_extract_subsequence_equals_official_grid_sample():
    torch.manual_seed(1)
    x, t, l = torch.randn(4, 64), torch.rand(4, 3, 1) * 0.9, torch.rand(4, 3, 1) * 0.5 + 0.02
    T = x.shape[1]
    r = torch.linspace(0, 1, 9)
    grid = t * (T - 1) + ((t + l).clamp(max=1) * (T - 1) - t * (T - 1)) * r
    grid = torch.stack([2 * grid / (T - 1) - 1, torch.ones_like(grid)], dim=-1)
    ref = F.grid_sample(x[:, None, None, :], grid, mode="bilinear", padding_mode="border", align_corners=True)[:, 0]
    assert torch.allclose(extract_subsequence(x, t, l, 9), ref, atol=1e-5)


def test_disentangle_loss_on_known_points():
    # l = 1 -> r = 0 -> every token at the origin: all pairs at distance 0 -> loss = threshold
    t = torch.rand(2, 5, 1)
    assert disentangle_loss(t, torch.ones(2, 5, 1), 0.2, 1 / 64).item() == pytest.approx(0.2)
    # two tokens: l = 1/64 -> r = 1; t = 0 and t = 1/2 -> points (1, 0) and (0, 1): distance sqrt 2 > 0.2
    t2, l2 = torch.tensor([[[0.0], [0.5]]]), torch.full((1, 2, 1), 1 / 64)
    assert disentangle_loss(t2, l2, 0.2, 1 / 64).item() == pytest.approx(0.0)
    # r = 1 at t = 0 and r = 0.9 (l = 64^-0.9) at t = 0: distance 0.1 -> relu(0.2 - 0.1) = 0.1
    l3 = torch.tensor([[[1 / 64], [64 ** -0.9]]])
    assert disentangle_loss(torch.zeros(1, 2, 1), l3, 0.2, 1 / 64).item() == pytest.approx(0.1, abs=1e-5)


# ----------------------------------------------------------------------------- shape decoder
def spread_codebook(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.codebook.weight.copy_(torch.randn(model.codebook.weight.shape, generator=g))


def test_decode_once_is_exact_in_value_and_gradient():
    torch.manual_seed(0)
    cfg = tiny_cfg(num_code=12, dropout=0.0, mask_ratio=0.0, dim_code=4)
    a = VQShape(cfg, 2, 3)
    spread_codebook(a)
    with torch.no_grad():  # z heads produce spread z_e so several codes are in use
        a.attr.z_head[-1].weight.mul_(50)
    b = copy.deepcopy(a)
    b.shape_decoder.dedup = False
    x, y = torch.randn(16, 2, 512), torch.randint(0, 3, (16,))
    outs, grads = [], []
    for m in (a, b):
        out = m(x)
        sum(m.losses(out, y).values()).backward()
        outs.append(out)
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    used = outs[0]["code_idx"].unique().numel()
    assert 2 <= used < outs[0]["code_idx"].numel() // 6, used   # the decode-once path really ran
    assert torch.allclose(outs[0]["s_hat"], outs[1]["s_hat"], atol=1e-5)
    for n in grads[1]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-5, rtol=1e-4), n


def test_hybrid_decode_mixes_popular_and_rare_codes_exactly():
    torch.manual_seed(0)
    dec = ShapeDecoder(4, 32)
    codes = torch.randn(6, 4, requires_grad=True)
    idx = torch.tensor([0] * 30 + [1] * 12 + [2, 3, 3, 4, 5])           # two popular codes, four rare
    idx = idx[torch.randperm(len(idx))]
    z_e = torch.randn(len(idx), 4, requires_grad=True)
    g = torch.randn(len(idx), 32)
    results = []
    for dedup in (True, False):
        dec.dedup = dedup
        dec.zero_grad()
        z_e.grad = None
        z_q = z_e + (codes[idx] - z_e).detach()
        s = dec(z_q, idx, codes)
        (s * g).sum().backward()
        results.append((s.detach(), z_e.grad.clone(), {n: p.grad.clone() for n, p in dec.named_parameters()}))
    (s1, gz1, gp1), (s2, gz2, gp2) = results
    assert torch.allclose(s1, s2, atol=1e-5) and torch.allclose(gz1, gz2, atol=1e-4)
    # the last conv's bias cancels in the normalisation: its true gradient is 0, both are rounding noise
    last_bias = "net.7.bias"
    assert gp1[last_bias].abs().max() < 1e-2 and gp2[last_bias].abs().max() < 1e-2
    for n in gp1:
        if n != last_bias:
            assert torch.allclose(gp1[n], gp2[n], atol=1e-4, rtol=1e-4), n


def test_shape_decoder_output_is_normalised_and_jacobian_matches_autograd():
    dec = ShapeDecoder(4, 32)
    c = torch.randn(3, 4)
    s = dec.decode(c)
    assert torch.allclose(s.mean(-1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(s.std(-1), torch.ones(3), atol=1e-4)
    J = dec.jacobian(c)
    ref = torch.autograd.functional.jacobian(lambda v: dec.decode(v[None])[0], c[1])
    assert torch.allclose(J[1], ref, atol=1e-4)


# ----------------------------------------------------------------------------- model
def test_forward_shapes():
    B, C = 3, 2
    m = VQShape(tiny_cfg(), C, 4)
    out = m(torch.randn(B, C, 512))
    N, dc = 8, 8
    expect = {"z_e": (B * C, N, dc), "z_q": (B * C, N, dc), "t": (B * C, N, 1), "l": (B * C, N, 1),
              "mu": (B * C, N, 1), "sigma": (B * C, N, 1), "code_idx": (B * C, N), "code_dist": (B * C, N, 16),
              "h": (B * C, N, 32), "shape_tokens": (B, C * N, 32), "logits": (B, 4), "s_hat": (B * C, N, 32),
              "x_hat": (B * C, 512), "features": (B, 32, C * N)}
    for k, shape in expect.items():
        assert tuple(out[k].shape) == shape, k
    assert ((out["t"] >= 0) & (out["t"] <= 1 - 1 / 64)).all()
    assert ((out["l"] >= 1 / 64) & (out["t"] + out["l"] <= 1 + 1e-6)).all()
    assert (out["sigma"] > 0).all()


def test_mask_ratio_drops_patches_only_in_training():
    m = VQShape(tiny_cfg(), 1, 2)
    seen = []
    m.encoder.encoder.register_forward_hook(lambda mod, inp, out: seen.append(out.shape[1]))
    m.train()(torch.randn(2, 1, 512))
    m.eval()(torch.randn(2, 1, 512))
    assert seen == [64 - 16, 64]


def test_gradients_reach_encoder_through_z_q():
    """The shape loss alone reaches the z head and the patch encoder only via straight-through z_q."""
    torch.manual_seed(0)
    m = VQShape(tiny_cfg(dropout=0.0), 1, 2)
    out = m(torch.randn(4, 1, 512))
    m.losses(out, torch.zeros(4, dtype=torch.long))["s"].backward()
    assert m.attr.z_head[0].weight.grad.abs().sum() > 0
    assert m.encoder.proj.weight.grad.abs().sum() > 0
    assert m.codebook.weight.grad is None or m.codebook.weight.grad.abs().sum() == 0   # no decoder grad to codes
    assert m.patch_decoder[0].attn.qkv.weight.grad is None                              # x_hat not in L_s


def test_subsequence_codes_describe_their_own_span():
    """code_input=subsequence: mu, sigma are the span's mean and std on the normalised series, z_e is the
    code encoder on the span's z-normalised values, and the shape and s terms reach the code encoder but
    neither the spans nor the tokenizer (t, l learn from L_x and L_div only, as in the official code)."""
    torch.manual_seed(0)
    m = VQShape(tiny_cfg(dropout=0.0, code_input="subsequence", lambda_shape_norm=1.0), 1, 2)
    assert not hasattr(m.attr, "z_head") and not hasattr(m.attr, "mu_head")
    out = m(torch.randn(4, 1, 512))
    sub = extract_subsequence(out["x_n"], out["t"], out["l"], 32)
    assert torch.allclose(out["mu"], sub.mean(-1, keepdim=True), atol=1e-6)
    assert torch.allclose(out["sigma"], sub.std(-1, keepdim=True), atol=1e-6)
    z = m.attr.code_encoder((sub - sub.mean(-1, keepdim=True)) / sub.std(-1, keepdim=True))
    assert torch.allclose(out["z_e"], z, atol=1e-5)
    terms = m.losses(out, torch.zeros(4, dtype=torch.long))
    (terms["s"] + terms["shape"]).backward(retain_graph=True)
    assert m.attr.code_encoder[0].weight.grad.abs().sum() > 0
    assert m.attr.tl_head[0].weight.grad is None and m.encoder.proj.weight.grad is None
    terms["x"].backward()
    assert m.attr.tl_head[0].weight.grad.abs().sum() > 0                               # L_x moves the spans


def test_bad_input_errors():
    m = VQShape(tiny_cfg(), 2, 3)
    with pytest.raises(ValueError, match=r"expected \[\*, 2, 512\]"):
        m(torch.randn(2, 3, 512))
    x = torch.randn(2, 2, 512)
    x[1, 0, 7] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf"):
        m(x)
    with pytest.raises(ValueError, match="divisible"):
        VQShape(tiny_cfg(dim=30), 2, 3)


# ----------------------------------------------------------------------------- text-guided teacher
def test_mmvqshape_keys_targets_and_losses():
    torch.manual_seed(0)
    text = text_tensors()
    m = MMVQShape(tiny_cfg(), FusionConfig(), 2, 3, **text, align=AlignmentConfig(target="none"))
    x, y = torch.randn(4, 2, 512), torch.tensor([0, 1, 2, 1])
    out = m(x, y, keys="class")
    assert out["p_tok"].shape == (8, 8, 5)
    assert torch.allclose(out["p_tok"].sum(-1), torch.ones(8, 8), atol=1e-5)
    # class 1 owns vocabulary entries {2, 3}: its tokens' targets are zero elsewhere
    rows = out["p_tok"][2:4]                                    # sample 1, both channels
    assert rows[..., [0, 1, 4]].abs().max() == 0
    vocab = m(x, keys="vocab")
    assert vocab["attn"].shape == (8, 8, 5) and not vocab["class_mode"].any()
    terms = m.losses(vocab, y)                                   # no class text: class-text terms are 0
    assert terms["act"].item() == 0 and terms["label"].item() == 0 and terms["con"].item() == 0
    assert set(m.losses(out, y)) == {"x", "vq", "s", "div", "ce", "act", "label", "con", "vq_action"}


@pytest.mark.parametrize("target", ["ordered", "set"])
def test_alignment_targets_live_on_the_class_sub_actions_and_switch_after_warmup(target):
    torch.manual_seed(0)
    m = MMVQShape(tiny_cfg(), FusionConfig(), 2, 3, **text_tensors(),
                  align=AlignmentConfig(target=target, warmup_steps=2))
    m.code_emit.counts.uniform_(0, 5)                            # a code table that tells sub-actions apart
    x, y = torch.randn(4, 2, 512), torch.tensor([0, 1, 2, 1])
    out = m(x, keys="vocab")                                     # no class text as keys: the class is still known
    assert out["sub_scores"].shape == (8, 8, 5)
    terms = m.losses(out, y)
    assert {"sub", "act"} <= set(terms) and terms["act"].item() > 0 and terms["sub"].item() > 0
    assert set(m.losses(out, y, supervised=False)) == {"x", "vq", "s", "div"}
    warm = m.alignment_targets(out, y, ordered=False)
    aligned = m.alignment_targets(out, y, ordered=True)
    for p in (warm, aligned):
        assert torch.allclose(p.sum(-1), torch.ones(8, 8), atol=1e-5) and not p.requires_grad
        assert p[2:4][..., [0, 1, 4]].abs().max() == 0           # class 1 owns vocabulary entries {2, 3}
    assert not torch.allclose(warm, aligned)                     # the order changes the targets
    m.train()
    before = int(m.align_steps)                                  # training steps count, evaluation does not
    for _ in range(3):
        m.losses(m(x, keys="vocab"), y)
    m.eval()
    m.losses(m(x, keys="vocab"), y)
    assert int(m.align_steps) == before + 3


def test_code_emissions_learn_from_training_steps_only_and_target_the_class_sub_actions():
    torch.manual_seed(0)
    m = MMVQShape(tiny_cfg(dropout=0.0), FusionConfig(), 2, 3, **text_tensors(),
                  align=AlignmentConfig(target="ordered", warmup_steps=0, code_decay=0.5))
    x, y = torch.randn(4, 2, 512), torch.tensor([0, 1, 2, 1])
    m.train()
    out = m(x, keys="vocab")
    p = m.alignment_targets(out, y, ordered=True)
    assert torch.allclose(p.sum(-1), torch.ones(8, 8), atol=1e-5) and p[2:4][..., [0, 1, 4]].abs().max() == 0
    assert m.code_emit.counts.sum().item() == pytest.approx(4 * 2 * 8)      # one expected count per token
    assert (m.code_emit.counts.sum(dim=(1, 2)) == 4 * 8).all()              # per channel
    m.losses(out, y)["sub"].backward()
    assert m.code_emit.counts.sum().item() == pytest.approx(0.5 * 64 + 64)  # decayed, then this step's tokens
    assert m.sub_tok[0].weight.grad.abs().sum() > 0                         # the scores learn the targets
    m.eval()
    with torch.no_grad():
        m.losses(m(x, keys="vocab"), y)
        dec = m.decode_subactions(x, y)
    assert m.code_emit.counts.sum().item() == pytest.approx(0.5 * 64 + 64)  # evaluation does not learn
    assert dec["viterbi"].shape == (8, 8) and dec["loglik"].shape == (4,)
    cls = m.class_index[y.repeat_interleave(2)]
    assert (dec["viterbi"][..., None] == cls[:, None, :]).any(-1).all()     # states of the window's class


def test_alignment_scores_get_gradient_but_targets_do_not():
    # a token's scores read every channel's codes around its time, so L_sub reaches the code encoder (text
    # reaches the shape codes), never the spans, which order the tokens, nor the tokenizer, which the codes
    # read off the subsequence do not read; tokens of different channels in one time bin get the same scores
    torch.manual_seed(0)
    x, y = torch.randn(4, 2, 512), torch.tensor([0, 1, 2, 1])
    w = MMVQShape(tiny_cfg(dropout=0.0, code_input="subsequence", span_init="tiling"),
                  FusionConfig(), 2, 3, **text_tensors(), align=AlignmentConfig(target="ordered", warmup_steps=0))
    out = w(x, keys="vocab")
    w.losses(out, y)["sub"].backward()
    assert w.sub_tok[0].weight.grad.abs().sum() > 0 and w.sub_txt.weight.grad.abs().sum() > 0
    assert w.attr.code_encoder[0].weight.grad.abs().sum() > 0 and w.attr.tl_head[0].weight.grad is None
    assert all(p.grad is None for p in [*w.encoder.parameters(), *w.tokenizer.parameters()])
    s, bins = out["sub_scores"].view(4, 2, 8, -1), (out["t"] + out["l"] / 2).view(4, 2, 8).mul(8).floor()
    same = bins[:, 0] == bins[:, 1]
    assert same.any() and torch.allclose(s[:, 0][same], s[:, 1][same], atol=1e-5)


@pytest.mark.parametrize("k", [0, 1, 3])
def test_window_scores_read_every_channel_exactly_k_bins_either_side(k):
    """alignment.context=k: the features of a token in time bin n depend on the tokens of every channel in bins
    n-k .. n+k and on nothing else (brute force over the bins, by gradient)."""
    C, N, B = 2, 8, 1
    w = MMVQShape(tiny_cfg(dropout=0.0, code_input="subsequence", span_init="tiling"),
                  FusionConfig(), C, 3, **text_tensors(), align=AlignmentConfig(target="ordered", context=k))
    z = torch.randn(B * C, N, w.cfg.dim_code, requires_grad=True)
    t = (torch.arange(N) / N + 0.01).expand(B * C, N)[..., None]                # token i sits in bin i
    out = {"z_e": z, "mu": torch.randn(B * C, N, 1), "sigma": torch.rand(B * C, N, 1), "t": t,
           "l": torch.zeros(B * C, N, 1)}
    f = w.window_features(out, B)
    assert f.shape == (B * C, N, (2 * k + 1) * C * (w.cfg.dim_code + 2)) == (B * C, N, w.sub_tok[0].in_features)
    for n in range(N):
        g, = torch.autograd.grad(f[0, n].sum(), z, retain_graph=True)
        reached = g.abs().sum(-1) > 0                                           # (C, N)
        expect = ((torch.arange(N) - n).abs() <= k).expand(C, N)
        assert torch.equal(reached, expect), n


def test_code_chain_switches_to_the_scores_at_the_set_step():
    """alignment.scores_from_step=S: before S the window chain emits the code table's summed log p(code |
    state); from S each time bin emits the mean, over the tokens in it, of log softmax(scores) - log prior
    at the class's states (brute force)."""
    torch.manual_seed(0)
    C = 2
    m = MMVQShape(tiny_cfg(dropout=0.0, code_input="subsequence", span_init="tiling"),
                  FusionConfig(), C, 3,
                  **text_tensors(), align=AlignmentConfig(target="ordered", warmup_steps=0, scores_from_step=3))
    m.code_emit.counts.uniform_(0, 5)
    m.sub_prior.copy_(torch.rand(m.M) + 0.1)
    x, y = torch.randn(4, C, 512), torch.tensor([0, 1, 2, 1])
    out = m(x, keys="vocab")
    B, N = len(y), out["code_idx"].shape[1]
    bins = ((out["t"] + out["l"] / 2).view(B, C, N) * N).floor().long().clamp(0, N - 1)
    ids = m.class_index[y]
    scaled = out["sub_scores"].log_softmax(-1) - m.sub_prior.log()
    log_table = m.code_emit.log_table()
    code_emit, score_emit = torch.zeros(B, N, ids.shape[1]), torch.zeros(B, N, ids.shape[1])
    for b in range(B):
        for n in range(N):
            toks = [(c, i) for c in range(C) for i in range(N) if bins[b, c, i] == n]
            for j in range(ids.shape[1]):
                code_emit[b, n, j] = sum(log_table[c, ids[b, j], out["code_idx"][b * C + c, i]] for c, i in toks)
                if toks:
                    score_emit[b, n, j] = sum(scaled[b * C + c, i, ids[b, j]] for c, i in toks) / len(toks)
    m.align_steps.fill_(2)
    assert torch.allclose(m.chain(out, y).emit, code_emit, atol=1e-4)
    m.align_steps.fill_(3)
    assert torch.allclose(m.chain(out, y).emit, score_emit, atol=1e-4)


def test_an_aligned_teacher_teaches_its_label_free_scores():
    torch.manual_seed(0)
    C = 2
    cfg = dict(target="ordered", warmup_steps=0)
    s = MMVQShape(tiny_cfg(dropout=0.0, code_input="subsequence", span_init="tiling"), FusionConfig(), C, 3,
                  **text_tensors(), align=AlignmentConfig(**cfg)).eval()
    x = torch.randn(4, C, 512)
    with torch.no_grad():
        assert torch.equal(s.teach(x, None, keys="vocab").sub_logits,
                           s(x, keys="vocab", reconstruct=False)["sub_scores"].view(4, -1, s.M))


def test_alignment_report_counts_windows_aligned_to_one_sub_action():
    """one_state_windows: the share of windows whose Viterbi path never changes state (3 of 4 here ->
    collapsed); dominant_state_share: the mean share of a window's tokens on its commonest state (which
    catches paths that change state only at a window's edge); free_top_share: the share of tokens on the
    commonest label-free entry."""
    from kd.recovery import DOMINANT_LIMIT, ONE_STATE_LIMIT, alignment_report
    torch.manual_seed(0)
    C = 2
    m = MMVQShape(tiny_cfg(dropout=0.0, code_input="subsequence", span_init="tiling"),
                  FusionConfig(), C, 3,
                  **text_tensors(), align=AlignmentConfig(target="ordered")).eval()
    data = [{"x": torch.randn(C, 512), "y": torch.tensor(i % 3)} for i in range(4)]
    N = m.cfg.num_token
    path = torch.zeros(4 * C, N, dtype=torch.long)
    path[6:, N // 2:] = 2                                                       # window 3 changes state
    free = torch.zeros(4 * C, N, dtype=torch.long)
    free[:, : N // 4] = 1                                                       # 3/4 of tokens on entry 0
    decode = m.decode
    m.decode = lambda out, y: {**decode(out, y), "viterbi": path, "free": free}
    rep = alignment_report(m, data)
    assert rep["one_state_windows"] == 0.75 and rep["collapsed"] == (0.75 > ONE_STATE_LIMIT) is True
    assert rep["dominant_state_share"] == (1 + 1 + 1 + 0.5) / 4 and rep["free_top_share"] == 0.75
    path.zero_()
    path[:, 0] = 1                                                              # every path leaves its state once
    rep = alignment_report(m, data)
    assert rep["one_state_windows"] == 0 and rep["dominant_state_share"] == (N - 1) / N > DOMINANT_LIMIT
    assert rep["collapsed"] is True
    path[:, N // 2:] = 3                                                        # half the window on another state
    rep = alignment_report(m, data)
    assert rep["dominant_state_share"] == 0.5 and rep["collapsed"] is False


def test_mmvqshape_rejects_class_without_text():
    text = text_tensors()
    text["class_mask"][2] = False
    with pytest.raises(ValueError, match=r"classes \[2\] have no sub-action text"):
        MMVQShape(tiny_cfg(), FusionConfig(), 2, 3, **text)


def test_mix_draws_class_text_for_the_expected_fraction():
    torch.manual_seed(0)
    m = MMVQShape(tiny_cfg(), FusionConfig(vocab_prob=0.25), 1, 3, **text_tensors())
    y = torch.randint(0, 3, (4000,))
    _, mask, class_mode = m.keys_for(y, "mix", len(y))
    assert class_mode.float().mean().item() == pytest.approx(0.75, abs=0.03)
    assert torch.equal(mask[class_mode][:, :3], m.class_mask[y[class_mode]])


def test_kl_and_supcon_analytic():
    p = torch.tensor([[0.5, 0.5, 0.0]])
    assert kl_rows(p, p.clamp(min=1e-30).log()).item() == pytest.approx(0.0, abs=1e-6)
    q = torch.tensor([[0.25, 0.25, 0.5]])
    assert kl_rows(p, q.log()).item() == pytest.approx(math.log(2), rel=1e-6)
    # two samples of different classes, perfectly aligned modalities: loss = log(1 + e^{-2/tau})
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    val = supcon_loss(s, s, torch.tensor([0, 1]), torch.tensor([True, True]), temperature=0.5)
    assert val.item() == pytest.approx(math.log(1 + math.exp(-2.0)), rel=1e-5)


def test_mmvqshape_gradient_reaches_text_projection_and_fusion():
    torch.manual_seed(0)
    m = MMVQShape(tiny_cfg(dropout=0.0), FusionConfig(), 2, 3, **text_tensors())
    x, y = torch.randn(4, 2, 512), torch.tensor([0, 1, 2, 1])
    sum(m.losses(m(x, y, keys="class"), y).values()).backward()
    for name in ("text_proj.weight", "sig_attn.qkv.weight", "txt_attn.qkv.weight", "action_decoder.0.weight",
                 "label_head.0.weight", "action_codebook.weight"):
        assert dict(m.named_parameters())[name].grad.abs().sum() > 0, name
    assert m.vocab_emb.grad is None                             # text embeddings are frozen buffers


# ----------------------------------------------------------------------------- freezing and checkpoints
def test_frozen_teacher_gets_no_gradient_and_round_trips(tmp_path):
    torch.manual_seed(0)
    text = text_tensors()
    m = MMVQShape(tiny_cfg(), FusionConfig(), 2, 3, **text).eval().requires_grad_(False)
    x, y = torch.randn(3, 2, 512), torch.tensor([0, 1, 2])
    student_param = torch.nn.Parameter(torch.ones(()))
    out = m.teach(x * student_param, y)
    (out.logits.sum() + out.attr["z_e"].sum()).backward()
    assert all(p.grad is None for p in m.parameters())
    assert student_param.grad is not None
    save_model(tmp_path / "t", m, {"role": "teacher"})
    state, meta = read_checkpoint(tmp_path / "t")
    m2 = MMVQShape(tiny_cfg(), FusionConfig(), 2, 3, **text_tensors(seed=1))
    load_weights(m2, state, "t")
    m2.eval()
    a, b = m.teach(x, y), m2.teach(x, y)
    for k in ("logits", "shape_tokens", "code_dist", "action_logits"):
        assert torch.equal(a.get(k), b.get(k)), k
    assert meta["role"] == "teacher"


def test_a_checkpoint_with_an_extra_key_fails_and_names_it():
    torch.manual_seed(0)
    m = MMVQShape(tiny_cfg(dropout=0.0), FusionConfig(), 2, 3, **text_tensors()).eval()
    with pytest.raises(CheckpointError, match=r"unexpected \['codebook.extra'\]"):
        load_weights(m, {**m.state_dict(), "codebook.extra": torch.ones(1)}, "bad")


# ----------------------------------------------------------------------------- health options
def test_losses_on_the_normalised_scale_and_the_normalised_shape_term():
    torch.manual_seed(0)
    m = VQShape(tiny_cfg(lambda_shape_norm=2.0), 2, 3).eval()
    x = torch.randn(3, 2, 512) * 7 + 3
    out = m(x)
    terms = m.losses(out, torch.tensor([0, 1, 2]))
    assert torch.allclose(out["x_hat"], out["x_hat_n"] * out["std"] + out["mean"])
    assert terms["x"].item() == pytest.approx(F.mse_loss(out["x_hat_n"], out["x_n"]).item(), rel=1e-6)
    target = extract_subsequence(out["x_n"], out["t"], out["l"], 32)
    assert terms["s"].item() == pytest.approx(F.mse_loss(out["s_hat_n"], target).item(), rel=1e-6)
    zt = (target - target.mean(-1, keepdim=True)) / target.std(-1, keepdim=True).clamp(min=1e-2)
    assert terms["shape"].item() == pytest.approx(2.0 * F.mse_loss(out["shape"], zt).item(), rel=1e-5)
    raw = VQShape(tiny_cfg(loss_scale="input"), 2, 3).eval()
    raw.load_state_dict(m.state_dict())
    out = raw(x)
    assert raw.losses(out, torch.tensor([0, 1, 2]))["x"].item() == pytest.approx(
        F.mse_loss(out["x_hat"], out["x"]).item(), rel=1e-6)


@pytest.mark.parametrize("head_arch", ["flat", "conv"])
def test_detached_head_cross_entropy_trains_the_head_only(head_arch):
    torch.manual_seed(0)
    m = VQShape(tiny_cfg(head_detach=True, head_arch=head_arch), 2, 3)
    out = m(torch.randn(4, 2, 512))
    m.losses(out, torch.tensor([0, 1, 2, 0]))["ce"].backward()
    grads = {n: p.grad for n, p in m.named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("head."))
    assert all(g is None or g.abs().sum() == 0 for n, g in grads.items() if not n.startswith("head."))


def test_conv_head_reads_each_channel_in_span_order_and_the_same_filters_everywhere():
    """head_arch=conv: the model hands the head each channel's tokens sorted by span centre; and the head
    gives a pattern the same evidence wherever it sits: trained to find one marked token at the first
    half's positions, it finds it in the second half, where a flat head, one weight per slot, is at chance."""
    torch.manual_seed(0)
    m = VQShape(tiny_cfg(head_arch="conv", dropout=0.0), 2, 3).eval()          # official spans: any order
    seen = {}
    m.head.register_forward_hook(lambda mod, args, res: seen.update(tokens=args[0]))
    out = m(torch.randn(3, 2, 512), reconstruct=False)
    N = m.cfg.num_token
    centre = (out["t"] + out["l"] / 2).squeeze(-1)                                    # (B*C, N)
    assert not (centre.argsort(1) == torch.arange(N)).all()                           # slots are not in order
    assert (seen["tokens"].view(6, N, -1)[:, :, -2] == out["t"].squeeze(-1).gather(1, centre.argsort(1))).all()
    from kd.vqshape import TokenHead
    N, k = 16, 4
    def windows(n, lo, hi, g):
        tok = torch.randn(n, N, k, generator=g) * 0.1
        y = torch.randint(2, (n,), generator=g)
        pos = torch.randint(lo, hi, (n,), generator=g)
        tok[torch.arange(n), pos, 0] += 3.0 * y                                       # class 1: one marked token
        return tok, y
    g = torch.Generator().manual_seed(0)
    (xtr, ytr), (xte, yte) = windows(256, 0, N // 2, g), windows(256, N // 2, N, g)
    acc = {}
    for arch in ("flat", "conv"):
        torch.manual_seed(0)
        head = TokenHead(1, N, k, 2, hidden=32, channel_stats=False, dropout=0.0, arch=arch)
        opt = torch.optim.Adam(head.parameters(), 1e-2)
        z = torch.zeros(len(ytr), 1)
        for _ in range(150):
            opt.zero_grad()
            F.cross_entropy(head(xtr, z, z + 1), ytr).backward()
            opt.step()
        head.eval()
        acc[arch] = (head(xte, z, z + 1).argmax(1) == yte).float().mean().item()
    assert acc["conv"] > 0.95 and acc["flat"] < 0.7, acc


def test_decoder_class_token_is_read_and_dropped():
    m = VQShape(tiny_cfg(decoder_cls_token=True), 1, 2)
    out = m(torch.randn(2, 1, 512))
    assert out["x_hat"].shape == (2, 512)
    m.losses(out, torch.tensor([0, 1]))["x"].backward()
    assert m.dec_cls.grad is not None and m.dec_cls.grad.abs().sum() > 0
    assert VQShape(tiny_cfg(decoder_cls_token=False), 1, 2).dec_cls is None


def test_positions_start_at_the_configured_scale():
    torch.manual_seed(0)
    assert VQShape(tiny_cfg(), 1, 2).encoder.pos.std().item() == pytest.approx(1.0, abs=0.05)
    assert VQShape(tiny_cfg(pos_init_std=0.02), 1, 2).encoder.pos.std().item() == pytest.approx(0.02, abs=0.002)


def test_self_supervised_task_keeps_only_the_vqshape_terms():
    from kd.distiller import OwnLossTask
    torch.manual_seed(0)
    m = MMVQShape(tiny_cfg(), FusionConfig(), 2, 3, **text_tensors())
    batch = {"x": torch.randn(4, 2, 512), "y": torch.tensor([0, 1, 2, 1])}
    full, _ = OwnLossTask(m)(batch)
    ssl, _ = OwnLossTask(m, self_supervised=True)(batch)
    assert {"ce", "act", "label", "con", "vq_action"} <= set(full)
    assert set(ssl) == {"x", "vq", "s", "div"}


@pytest.mark.parametrize("decoder_input", ["tokens", "spans"])
def test_what_the_patch_decoder_reads(decoder_input):
    """decoder_input=tokens (official): the decoder has no positions, so swapping two tokens swaps their
    output patches -- only a token's code can say which patch it owes. decoder_input=spans: patch i reads
    the tokens covering it, so the same tokens in another order give the same reconstruction."""
    torch.manual_seed(0)
    m = VQShape(tiny_cfg(decoder_input=decoder_input), 1, 2).eval()
    out = m(torch.randn(2, 1, 512), reconstruct=False)
    x_hat = m.reconstruct(out)["x_hat_n"].view(2, 8, -1)
    perm = torch.tensor([1, 0, *range(2, 8)])
    swapped = {**out, **{k: out[k][:, perm] for k in ("h_hat", "t", "l")}}
    x_swapped = m.reconstruct(swapped)["x_hat_n"].view(2, 8, -1)
    if decoder_input == "tokens":
        assert torch.allclose(x_swapped, x_hat[:, perm], atol=1e-5)
    else:
        assert torch.allclose(x_swapped, x_hat, atol=1e-5)


def test_span_weights_follow_the_spans():
    from kd.vqshape import span_weights
    t = torch.tensor([[[0.0], [0.5]]])                     # token 0 on [0, .5], token 1 on [.5, .75]
    l = torch.tensor([[[0.5], [0.25]]])
    a = span_weights(t, l, 8)[0]                           # patch centres 1/16, 3/16, ..., 15/16
    assert torch.allclose(a[:3], torch.tensor([[1.0, 0.0]] * 3), atol=0.15)   # soft edges: 0.88 half a patch in
    assert torch.allclose(a[4:6], torch.tensor([[0.0, 1.0]] * 2), atol=0.15)
    assert a[7].sum() < 0.01                               # nothing covers the last patch: reads ~nothing
    assert (a.sum(-1) <= 1 + 1e-6).all()
    t.requires_grad_(True)
    span_weights(t, l, 8)[0, 3, 0].backward()
    assert t.grad[0, 0, 0] != 0                            # spans learn from where they cover


def test_span_overlap_weights_are_the_covered_fraction_of_each_patch():
    from kd.vqshape import span_overlap_weights
    t = torch.tensor([[[0.0], [0.5625]]])                  # token 0 on [0, .5], token 1 on [.5625, .75]
    l = torch.tensor([[[0.5], [0.1875]]])
    a = span_overlap_weights(t, l, 8)[0]                   # patches [i/8, (i+1)/8]
    expect = torch.tensor([[1.0, 0.0]] * 4 + [[0.0, 0.5], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    assert torch.allclose(a, expect, atol=1e-6)            # patch 4 half covered: half the token
    both = span_overlap_weights(torch.tensor([[[0.0], [0.0]]]), torch.tensor([[[1.0], [1.0]]]), 4)[0]
    assert torch.allclose(both, torch.full((4, 2), 0.5))   # two spans over a patch: their mean
    l.requires_grad_(True)
    span_overlap_weights(t, l, 8)[0, 4, 1].backward()
    assert l.grad[0, 1, 0] == 0 and t.grad is None         # token 1 starts inside patch 4: its length does not matter
    t.requires_grad_(True)
    span_overlap_weights(t, l, 8)[0, 4, 1].backward()
    assert t.grad[0, 1, 0] < 0                             # moving its start left covers more of patch 4


def test_tiling_span_init_starts_the_slots_side_by_side():
    """span_init=tiling: with the t/l head's output at zero, slot i sits on [i/N, i/N + 2/N] (clamped to the
    head's range); the offsets are learned parameters. span_init=none keeps the official heads."""
    torch.manual_seed(0)
    m = VQShape(tiny_cfg(span_init="tiling"), 1, 2).eval()
    with torch.no_grad():
        m.attr.tl_head[-1].weight.zero_()
        m.attr.tl_head[-1].bias.zero_()
    out = m(torch.randn(2, 1, 512), reconstruct=False)
    n = 8
    expect_t = torch.arange(n) / n
    assert torch.allclose(out["t"][0, 1:, 0], expect_t[1:], atol=1e-4)       # slot 0: clamped at logit(0.01)
    assert torch.allclose(out["l"][0, 1:-1, 0], torch.full((n - 2,), 2 / n), atol=1e-4)
    assert (out["t"] + out["l"])[0, -1, 0] > 0.99                          # the last slot reaches the end
    assert m.attr.span_offsets.requires_grad
    assert VQShape(tiny_cfg(), 1, 2).attr.span_offsets is None


def test_the_code_read_off_the_subsequence_gives_the_span_heads_no_gradient():
    """code_input=subsequence: the code z_e, mu and sigma read the subsequence under detached t and l (as the
    official L_s target), so the t/l head learns where spans go from L_x and L_div only."""
    torch.manual_seed(0)
    m = VQShape(tiny_cfg(code_input="subsequence"), 1, 2).eval()
    out = m(torch.randn(2, 1, 512), reconstruct=False)
    (out["z_e"].sum() + out["mu"].sum() + out["sigma"].sum()).backward()
    assert m.attr.tl_head[-1].weight.grad is None and m.attr.code_encoder[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("k,layers", [(0, 1), (1, 2)])
def test_conv_reader_scores_read_exactly_k_plus_2L_bins_either_side(k, layers):
    """alignment.layers=L: a token's projection in bin n depends on every channel's tokens in bins n-k-2L .. n+k+2L
    and on nothing else (brute force over the bins, by gradient); tokens of one bin share it."""
    C, N, B = 2, 16, 1
    torch.manual_seed(0)
    w = MMVQShape(tiny_cfg(dropout=0.0, code_input="subsequence", span_init="tiling", num_token=N),
                  FusionConfig(), C, 3, **text_tensors(),
                  align=AlignmentConfig(target="ordered", context=k, layers=layers))
    for conv in w.sub_tok.convs:                     # generic weights: no ReLU dead everywhere by chance
        torch.nn.init.normal_(conv.bias, 1.0, 0.1)
    z = torch.randn(B * C, N, w.cfg.dim_code, requires_grad=True)
    t = (torch.arange(N) / N + 0.01).expand(B * C, N)[..., None]                # token i sits in bin i
    out = {"z_e": z, "mu": torch.randn(B * C, N, 1), "sigma": torch.rand(B * C, N, 1), "t": t,
           "l": torch.zeros(B * C, N, 1)}
    p = w.token_projection(out, B)
    assert p.shape == (B * C, N, w.align.dim) and torch.equal(p[0], p[1])
    reach = k + 2 * layers
    for n in range(N):
        g, = torch.autograd.grad(p[0, n].sum(), z, retain_graph=True)
        assert torch.equal(g.abs().sum(-1) > 0, ((torch.arange(N) - n).abs() <= reach).expand(C, N)), n


def test_conv_reader_learns_from_the_alignment_targets_and_mlp_reader_is_unchanged():
    torch.manual_seed(0)
    x, y = torch.randn(4, 2, 512), torch.tensor([0, 1, 2, 1])
    w = MMVQShape(tiny_cfg(dropout=0.0, code_input="subsequence", span_init="tiling"),
                  FusionConfig(), 2, 3, **text_tensors(),
                  align=AlignmentConfig(target="ordered", warmup_steps=0, layers=2))
    w.losses(w(x, keys="vocab"), y)["sub"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in w.sub_tok.parameters())
    assert w.attr.tl_head[0].weight.grad is None                                # spans still untouched
    m = MMVQShape(tiny_cfg(dropout=0.0), FusionConfig(), 2, 3, **text_tensors(),
                  align=AlignmentConfig(target="ordered", context=1))
    out = m(x, keys="vocab")
    assert torch.equal(out["sub_scores"], m.sub_scores(m.sub_tok(m.window_features(out, 4))))
