"""The speed-motivated layers keep the maths: dropout distribution, attention paths agree."""
import pytest
import torch

from kd.layers import Attention, Dropout


def test_dropout_keeps_the_distribution_and_scaling():
    torch.manual_seed(0)
    d = Dropout(0.1).train()
    x = torch.ones(1000, 1000, requires_grad=True)
    y = d(x)
    kept = y != 0
    assert kept.float().mean().item() == pytest.approx(0.9, abs=2e-3)        # keep probability 1 - p
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.9))          # inverted scaling
    assert y.mean().item() == pytest.approx(1.0, abs=3e-3)                     # expectation preserved
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())                                     # grad = mask / (1 - p)
    d.eval()
    assert torch.equal(d(x), x)
    with pytest.raises(ValueError, match="must lie in"):
        Dropout(1.0)


def test_explicit_attention_equals_sdpa_and_mha():
    torch.manual_seed(0)
    att = Attention(16, 4, dropout=0.0).eval()
    x, ctx = torch.randn(3, 5, 16), torch.randn(3, 7, 16)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    sdpa = att(x, ctx, mask)
    explicit, weights = att.forward_with_weights(x, ctx, mask)
    assert torch.allclose(sdpa, explicit, atol=1e-5)
    assert torch.allclose(weights.sum(-1), torch.ones(3, 5), atol=1e-6)
    assert weights[1, :, 4:].abs().max() == 0
    # the same parameters in torch's MultiheadAttention give the same output
    mha = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(att.qkv.weight)
        mha.in_proj_bias.copy_(att.qkv.bias)
        mha.out_proj.weight.copy_(att.out.weight)
        mha.out_proj.bias.copy_(att.out.bias)
    ref, ref_w = mha(x, ctx, ctx, key_padding_mask=~mask)
    assert torch.allclose(sdpa, ref, atol=1e-5) and torch.allclose(weights, ref_w, atol=1e-6)


def test_training_path_with_dropout_zero_matches_eval_path():
    torch.manual_seed(1)
    att = Attention(8, 2, dropout=0.0)
    x = torch.randn(2, 6, 8)
    assert torch.allclose(att.train()(x), att.eval()(x), atol=1e-6)
    att_drop = Attention(8, 2, dropout=0.5).train()
    assert not torch.allclose(att_drop(x), att_drop.eval()(x))               # dropout really applies
