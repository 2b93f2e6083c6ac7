"""The inference form of a trained 1-D CNN student (WRN or ResNet): the same function, faster.

`FusedCNN(student, readout)` rewrites an eval-mode student once, after training:
- a BatchNorm that directly follows a conv is folded into that conv's weight and bias
  (WRN: bn2 into conv1; ResNet: every BN, the shortcut's included);
- a BatchNorm in front of a conv (WRN's pre-activation bn1, the input norm, the final BN)
  becomes one precomputed per-channel scale and shift;
- convolutions run as 2-D channels-last ([B, C, 1, T]): at batch 1 PyTorch's CPU kernel is an
  im2col + GEMM, and with channels last the im2col rows are contiguous, which makes strided and
  1x1 convolutions about 1.6x faster (experiments/BENCHMARKS.md §2);
- one flat forward: no per-module dispatch, ReLUs in place.
Outputs equal the eager model's in eval mode within float rounding (tests/test_fused.py).
It is for prediction only: no gradients, no training-mode BatchNorm, no features out.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from students.cnn import CNNStudent
from students.resnet import BasicBlock, ResNet1d
from students.wrn import PreActBlock, WRN1d
from kd.layers import check_finite_input, check_rank

CL = torch.channels_last
FUSABLE = (WRN1d, ResNet1d)          # the student classes FusedCNN has rules for


def bn_affine(bn: nn.BatchNorm1d) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as y = x * scale + shift, per channel."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fuse a BatchNorm without running statistics (track_running_stats=False)")
    scale = (bn.weight if bn.affine else 1.0) / torch.sqrt(bn.running_var + bn.eps)
    shift = (bn.bias if bn.affine else 0.0) - bn.running_mean * scale
    return scale.detach(), shift.detach()


class Step:
    """A fused piece of the network: plain tensors in plain attributes, because nn.Module's
    attribute lookup (buffers, submodules) cost ~50 us per window across the WRN's ~40 reads."""

    def apply_(self, fn) -> None:
        """Map every tensor it holds through fn (how FusedCNN.to() / .double() reach it)."""
        for name, value in vars(self).items():
            if torch.is_tensor(value):
                setattr(self, name, fn(value))
            elif isinstance(value, Step):
                value.apply_(fn)


class Affine(Step):
    """Per-channel x * scale + shift on [B, C, 1, T] (a BatchNorm with nothing to fold into)."""

    def __init__(self, bn: nn.BatchNorm1d):
        scale, shift = bn_affine(bn)
        self.scale, self.shift = scale.view(1, -1, 1, 1).clone(), shift.view(1, -1, 1, 1).clone()

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, x, self.scale)


class Conv(Step):
    """A Conv1d (+ the BatchNorm right after it, folded in) as a channels-last Conv2d over [B, C, 1, T]."""

    def __init__(self, conv: nn.Conv1d, bn: Optional[nn.BatchNorm1d] = None):
        if conv.groups != 1 or conv.dilation != (1,) or conv.padding_mode != "zeros":
            raise ValueError(f"cannot fuse {conv}: only zero-padded, ungrouped, undilated Conv1d")
        w = conv.weight.detach()                                              # (O, I, k)
        b = None if conv.bias is None else conv.bias.detach()
        if bn is not None:
            scale, shift = bn_affine(bn)
            w, b = w * scale[:, None, None], shift + (0.0 if b is None else b * scale)
        self.weight = w.unsqueeze(2).contiguous(memory_format=CL)             # (O, I, 1, k)
        self.bias = None if b is None else b.clone()
        self.stride, self.padding = (1, conv.stride[0]), (0, conv.padding[0])

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)


class FusedPreAct(Step):
    """WRN block: relu(bn1(x)) -> [conv1 + bn2 folded] -> relu -> conv2, plus the shortcut."""

    def __init__(self, block: PreActBlock):
        self.pre = Affine(block.bn1)
        self.conv1, self.conv2 = Conv(block.conv1, block.bn2), Conv(block.conv2)
        self.shortcut = None if block.shortcut is None else Conv(block.shortcut)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        o = self.pre.run(x).relu_()
        skip = x if self.shortcut is None else self.shortcut.run(o)
        return self.conv2.run(self.conv1.run(o).relu_()).add_(skip)


class FusedBasic(Step):
    """ResNet block: relu([conv1+bn1](x)) -> [conv2+bn2] + [shortcut conv+bn or x] -> relu."""

    def __init__(self, block: BasicBlock):
        self.conv1, self.conv2 = Conv(block.conv1, block.bn1), Conv(block.conv2, block.bn2)
        self.shortcut = None if isinstance(block.shortcut, nn.Identity) else Conv(*block.shortcut)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut.run(x)
        return self.conv2.run(self.conv1.run(x).relu_()).add_(skip).relu_()


def fuse_body(body: nn.Sequential) -> List[Tuple[Step, bool]]:
    """The student's body as [(fused step, relu after it)]: Conv1d [+ BatchNorm1d] [+ ReLU],
    a lone BatchNorm1d [+ ReLU], or a residual block."""
    mods, steps, i = list(body), [], 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, nn.Conv1d):
            bn = mods[i + 1] if i + 1 < len(mods) and isinstance(mods[i + 1], nn.BatchNorm1d) else None
            step, i = Conv(m, bn), i + (2 if bn is not None else 1)
        elif isinstance(m, nn.BatchNorm1d):
            step, i = Affine(m), i + 1
        elif isinstance(m, PreActBlock):
            step, i = FusedPreAct(m), i + 1
        elif isinstance(m, BasicBlock):
            step, i = FusedBasic(m), i + 1
        else:
            raise TypeError(f"students.fused has no rule for {type(m).__name__}; use the eager model")
        relu = i < len(mods) and isinstance(mods[i], nn.ReLU)
        steps.append((step, relu))
        i += relu
    return steps


class FusedCNN(nn.Module):
    """Inference form of a WRN1d / ResNet1d student: x [B, C, T] -> logits [B, n_cls].

    readout: optional map on the feature tokens [B, L, D] -> [B, L, D] applied before the
    head (the workspace read-out over the learned slot prior, `Workspace.prior_readout()`).
    """

    def __init__(self, student: CNNStudent, readout: Optional[nn.Module] = None):
        super().__init__()
        if not isinstance(student, FUSABLE):
            raise TypeError(f"FusedCNN fuses WRN1d and ResNet1d students, not {type(student).__name__}")
        self.num_channels = student.num_channels
        self.input_norm = Affine(student.input_norm)
        self.steps = fuse_body(student.body)                                   # [(Step, relu after it)]
        self.readout = readout
        self.register_buffer("head_weight", student.head.weight.detach().clone())
        self.register_buffer("head_bias", student.head.bias.detach().clone())
        self.eval()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_rank(x, [None, self.num_channels, None])
        check_finite_input(x)
        h = self.input_norm.run(x.unsqueeze(2).contiguous(memory_format=CL))   # (B, C, 1, T)
        for step, relu in self.steps:
            h = step.run(h)
            if relu:
                h = h.relu_()
        if self.readout is not None:
            tokens = h.permute(0, 2, 3, 1).flatten(1, 2)                         # (B, L, D), a view
            return F.linear(self.readout(tokens).mean(dim=1), self.head_weight, self.head_bias)
        return F.linear(h.mean(dim=(2, 3)), self.head_weight, self.head_bias)

    def _apply(self, fn, recurse: bool = True):
        """.to() / .double() / ... also reach the steps' plain tensors."""
        for step in (self.input_norm, *(s for s, _ in self.steps)):
            step.apply_(fn)
        return super()._apply(fn, recurse)
