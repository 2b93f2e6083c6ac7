"""The inference form of CNN students (students/fused.py) and the folded workspace read-out
compute the same function as the eager modules."""
import pytest
import torch
import torch.nn as nn

from kd.config import CNNConfig, WorkspaceConfig, VQShapeConfig
from kd.workspace import Workspace
from students import build_student
from students.fused import FusedCNN, fuse_body
from students.resnet import resnet_small
from students.wrn import wrn16_1, wrn16_3

ATOL = 1e-5
VARIANTS = {
    "wrn16_1": lambda: wrn16_1(6, 7, CNNConfig()),
    "wrn16_3": lambda: wrn16_3(6, 7, CNNConfig()),
    "wrn16_1_k3_stem2": lambda: wrn16_1(6, 7, CNNConfig(kernel_size=3, wrn_stem_stride=2)),
    "resnet": lambda: resnet_small(6, 7, CNNConfig()),
}


def trained_like(model: nn.Module) -> nn.Module:
    """Random BatchNorm statistics and affine parameters: fresh ones (mean 0, var 1, weight 1,
    bias 0) would let a folding bug that drops them go unnoticed."""
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.3, 3.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
    return model.eval()


def workspace_for(model, scale: float = 3.0) -> Workspace:
    torch.manual_seed(2)
    ws = Workspace(WorkspaceConfig(), [("shape", 192, 8)], model.feature_dim, model.feature_length(512)).eval()
    ws.slot_prior.data.mul_(scale * ws.slot_prior.shape[-1] ** 0.5)   # slots the read-out really reacts to
    return ws


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("T", [512, 500])
def test_fused_student_equals_eager(name, T):
    model = trained_like(VARIANTS[name]())
    x = torch.randn(3, 6, T) * 2
    with torch.no_grad():
        ref = model(x).logits
    out = FusedCNN(model)(x)
    assert out.shape == ref.shape == (3, 7)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["wrn16_1", "resnet"])
def test_fused_student_with_prior_readout_equals_eager(name):
    model = trained_like(VARIANTS[name]())
    ws = workspace_for(model)
    x = torch.randn(4, 6, 512)
    with torch.no_grad():
        plain = model(x).logits
        ref = model(x, mix=lambda f: ws(f, None)[0]).logits
    assert (ref - plain).abs().max() > 1e-2                       # the read-out changes the answer
    torch.testing.assert_close(FusedCNN(model, ws.prior_readout())(x), ref, atol=ATOL, rtol=0)


def test_prior_readout_equals_workspace_inference_path():
    ws = workspace_for(wrn16_1(6, 7, CNNConfig()))
    feats = torch.randn(2, 64, 128)
    with torch.no_grad():
        ref = ws(feats, None)[0].transpose(1, 2)                   # (B, L, D)
        out = ws.prior_readout()(feats.transpose(1, 2))
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    assert not any(p.requires_grad for p in ws.prior_readout().buffers())


def test_folding_does_not_touch_the_eager_model():
    model = trained_like(wrn16_1(6, 7, CNNConfig()))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    FusedCNN(model)(torch.randn(1, 6, 512))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fused_student_checks_its_input():
    fused = FusedCNN(trained_like(wrn16_1(6, 7, CNNConfig())))
    with pytest.raises(ValueError, match=r"x has shape \[1, 5, 512\], expected \[\*, 6, \*\]"):
        fused(torch.randn(1, 5, 512))
    x = torch.randn(1, 6, 512)
    x[0, 2, 7] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf"):
        fused(x)


def test_what_cannot_be_fused_is_refused():
    student = build_student("vqshape_student", CNNConfig(), VQShapeConfig(dim=16, enc_layers=1, enc_heads=2,
                            tok_layers=1, tok_heads=2, dec_layers=1, dec_heads=2), 6, 7, 0)
    with pytest.raises(TypeError, match="fuses WRN1d and ResNet1d students, not VQShapeStudent"):
        FusedCNN(student)
    with pytest.raises(TypeError, match="no rule for GELU"):
        fuse_body(nn.Sequential(nn.Conv1d(6, 8, 3, padding=1), nn.GELU()))
    with pytest.raises(ValueError, match="only zero-padded, ungrouped, undilated"):
        fuse_body(nn.Sequential(nn.Conv1d(6, 8, 3, padding=2, dilation=2)))


def test_inference_needs_exactly_the_counted_readout_parameters():
    """Workspace.readout_param_count() counts the prior, the student norm and the read attention:
    changing any other workspace parameter leaves inference unchanged, changing those does not."""
    model = trained_like(wrn16_1(6, 7, CNNConfig()))
    ws = workspace_for(model)
    x = torch.randn(2, 6, 512)
    infer = lambda: FusedCNN(model, ws.prior_readout())(x)               # noqa: E731
    ref = infer()
    used = {"slot_prior"} | {f"student_norm.{n}" for n, _ in ws.student_norm.named_parameters()} \
        | {f"read.{n}" for n, _ in ws.read.named_parameters()}
    assert ws.readout_param_count() == sum(p.numel() for n, p in ws.named_parameters() if n in used)
    with torch.no_grad():
        for n, p in ws.named_parameters():
            if n not in used:
                p.add_(torch.randn_like(p))
        torch.testing.assert_close(infer(), ref, atol=0, rtol=0)
        ws.read.qkv.weight.add_(torch.randn_like(ws.read.qkv.weight))
    assert (infer() - ref).abs().max() > 1e-3


def test_moving_the_fused_form_moves_every_step():
    """FusedCNN.double() converts the steps' plain tensors too (a missed one would raise a dtype error)."""
    model = trained_like(wrn16_1(6, 7, CNNConfig()))
    ws = workspace_for(model)
    fused = FusedCNN(model, ws.prior_readout()).double()
    x = torch.randn(2, 6, 512, dtype=torch.float64)
    with torch.no_grad():
        ref = model.double()(x, mix=lambda f: ws.double()(f, None)[0]).logits
    out = fused(x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)          # folded in float32, then cast
