"""1-D CNN students (WRN-16-1, WRN-16-3, small ResNet) and their token adapter."""
import math

import pytest
import torch
import torch.nn.functional as F

from kd.config import CNNConfig
from students.resnet import resnet_small
from students.wrn import WRN1d, wrn16_1, wrn16_3
from kd.layers import param_count

CFG = CNNConfig()
G, DC = 6 * 32, 8                       # teacher grid: 6 channels x 32 tokens, code dim 8
MIN_LEN = 1 / 64
# factory -> (feature_dim D, feature length L at T=512)
MODELS = {wrn16_1: (64, 128), wrn16_3: (192, 128), resnet_small: (128, 64)}


def make(factory, C=6, n_cls=7):
    torch.manual_seed(0)
    return factory(C, n_cls, CFG)


@pytest.mark.parametrize("C", [6, 3])
@pytest.mark.parametrize("factory", list(MODELS), ids=lambda f: f.__name__)
def test_shapes(factory, C):
    D, L = MODELS[factory]
    model = make(factory, C)
    x = torch.randn(2, C, 512)
    feats = model.encode(x)
    assert model.feature_dim == D and feats.shape == (2, D, L) and model.feature_length(512) == L
    assert model.decode(feats).shape == (2, 7)
    out = model(x)
    assert out.logits.shape == (2, 7) and out.features.shape == (2, D, L)
    adapted = model.token_adapter(G, DC)(feats)
    assert adapted["tokens"].shape == (2, G, CFG.adapter_dim)
    assert adapted["z_e"].shape == (2, G, DC)
    for k in ("t", "l", "mu", "sigma"):
        assert adapted[k].shape == (2, G, 1), k


@pytest.mark.parametrize("factory", [wrn16_1, resnet_small], ids=lambda f: f.__name__)
def test_other_lengths(factory):
    """feature_length predicts the real L for an odd T; the adapter resamples its positions."""
    model = make(factory)
    feats = model.encode(torch.randn(2, 6, 500))
    assert feats.shape[-1] == model.feature_length(500)
    assert model.token_adapter(G, DC, input_length=512)(feats)["z_e"].shape == (2, G, DC)


def test_parameter_budget():
    small, wide, res = (param_count(make(f)) for f in (wrn16_1, wrn16_3, resnet_small))
    assert small <= 300_000
    assert wide > 3 * small          # width x3 -> roughly x9 parameters
    assert res > small


@pytest.mark.parametrize("factory", list(MODELS), ids=lambda f: f.__name__)
def test_decode_encode_round_trip_and_protocol(factory):
    model = make(factory).eval()
    x = torch.randn(4, 6, 512)
    out = model(x)
    torch.testing.assert_close(model.decode(model.encode(x)), out.logits)
    torch.testing.assert_close(model.predict(x), out.logits)
    torch.testing.assert_close(model.fit_forward({"x": x, "y": torch.zeros(4)}).logits, out.logits)
    taught = model.teach(x)
    torch.testing.assert_close(taught.features, out.features)
    y = torch.tensor([0, 1, 2, 3])
    terms = model.losses(out, y)
    assert set(terms) == {"ce"}
    torch.testing.assert_close(terms["ce"], F.cross_entropy(out.logits, y))


@pytest.mark.parametrize("factory", list(MODELS), ids=lambda f: f.__name__)
def test_adapter_gradient_reaches_adapter_and_encoder_only(factory):
    model = make(factory)
    adapter = model.token_adapter(G, DC)
    out = model(torch.randn(3, 6, 512))
    a = adapter(out.features)
    (a["z_e"].pow(2).mean() + a["t"].mean() + a["l"].mean() + a["mu"].mean() + a["sigma"].mean()).backward()
    for name, p in adapter.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    stem = model.body[0].weight
    assert stem.grad is not None and stem.grad.abs().sum() > 0
    assert model.input_norm.weight.grad.abs().sum() > 0
    assert model.head.weight.grad is None and model.head.bias.grad is None


def test_adapter_attributes_obey_vqshape_constraints():
    torch.manual_seed(0)
    adapter = make(wrn16_1).token_adapter(G, DC)
    # Large features saturate the sigmoids: the bounds must hold at the extremes too.
    for scale in (1.0, 1e3):
        a = adapter(scale * torch.randn(4, 64, 128))
        t, l = a["t"], a["l"]
        assert t.min() >= 0 and t.max() <= 1 - MIN_LEN + 1e-6
        assert l.min() >= MIN_LEN - 1e-7
        assert (t + l).max() <= 1 + MIN_LEN + 1e-6
        assert a["sigma"].min() >= 0


def test_bad_input_errors_name_the_problem():
    model = make(wrn16_1)
    with pytest.raises(ValueError, match=r"shape \[2, 3, 512\], expected \[\*, 6, \*\]"):
        model(torch.randn(2, 3, 512))
    with pytest.raises(ValueError, match=r"expected \[\*, 6, \*\]"):
        model(torch.randn(6, 512))
    x = torch.randn(2, 6, 512)
    x[1, 2, 7] = float("nan")
    with pytest.raises(ValueError, match=r"NaN/inf \(first at index \[1, 2, 7\]\)"):
        model(x)
    with pytest.raises(ValueError, match="features has shape"):
        model.token_adapter(G, DC)(torch.randn(2, 32, 128))
    with pytest.raises(ValueError, match="kernel_size=4 must be odd"):
        wrn16_1(6, 7, CNNConfig(kernel_size=4))
    with pytest.raises(ValueError, match="depth=15 must be 6n\\+4"):
        WRN1d(15, 1, 6, 7, CFG)
    with pytest.raises(ValueError, match="wrn_stem_stride=0 must be >= 1"):
        wrn16_1(6, 7, CNNConfig(wrn_stem_stride=0))


@pytest.mark.parametrize("T", [512, 500])
def test_wrn_stem_stride_halves_every_later_length(T):
    base, strided = wrn16_1(6, 7, CFG), wrn16_1(6, 7, CNNConfig(wrn_stem_stride=2))
    assert param_count(base) == param_count(strided)
    feats = strided.encode(torch.randn(2, 6, T))
    assert feats.shape == (2, 64, strided.feature_length(T)) and strided.feature_length(T) == math.ceil(T / 8)
    assert base.feature_length(T) == math.ceil(T / 4)


def toy_problem(n=64, C=3, T=128):
    """Two separable classes: a slow vs a fast sinusoid on channel 0, noise elsewhere."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    freq = torch.where(y == 0, 2.0, 8.0)[:, None]
    phase = torch.rand(n, 1, generator=g) * 2 * math.pi
    x = 0.3 * torch.randn(n, C, T, generator=g)
    x[:, 0] += torch.sin(2 * math.pi * freq * torch.linspace(0, 1, T) + phase)
    return x, y


@pytest.mark.parametrize("factory", list(MODELS), ids=lambda f: f.__name__)
def test_few_steps_reduce_ce(factory):
    x, y = toy_problem()
    model = make(factory, C=3, n_cls=2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = sum(model.losses(model.fit_forward({"x": x, "y": y}), y).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    model.eval()
    assert (model.predict(x).argmax(-1) == y).float().mean() > 0.9


def test_sub_action_head_reads_every_channel_within_its_context_and_no_further():
    from students.adapter import SubActionHead
    torch.manual_seed(0)
    B, C, N, d, M = 2, 3, 6, 4, 5
    tokens = torch.randn(B, C * N, d, requires_grad=True)
    alone = SubActionHead(d, M, C, context=0)
    assert torch.equal(alone(tokens), alone.linear(tokens))                       # each token by itself
    head = SubActionHead(d, M, C, context=1)
    out = head(tokens).view(B, C, N, M)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])   # one score per position
    out[0, 0, 2].sum().backward()                                                 # position 2 of window 0
    reached = tokens.grad[0].view(C, N, d).abs().sum(-1) > 0                      # (C, N)
    assert reached[:, 1:4].all() and not reached[:, [0, 4, 5]].any()              # positions 1-3, all channels
    assert tokens.grad[1].abs().sum() == 0                                        # never another window
    with pytest.raises(ValueError, match="context=-1"):
        SubActionHead(d, M, C, context=-1)
