"""What every 1-D CNN student shares: input normalisation, encode/decode and the engine's protocol."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from students.adapter import TokenAdapter
from kd.layers import check_finite_input, check_rank
from kd.outputs import Classifier, Outputs


def same_conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Conv1d:
    """Conv1d with 'same' padding (odd kernel), no bias (a BatchNorm follows or precedes)."""
    return nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)


def check_odd_kernel(kernel: int) -> None:
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"cnn.kernel_size={kernel} must be odd and positive ('same' padding)")


class CNNStudent(Classifier, nn.Module):
    """encode / decode split; the engine's protocol from `Classifier`. Subclasses build `self.body`
    (x [B, C, T] -> features [B, D, L]), set `feature_dim`, `strides` and `cfg`."""

    # the Outputs fields distillation may read (kd/contract.py): forward as a student, `teach` as a teacher
    OUTPUTS = frozenset({"logits", "features"})
    TEACH_OUTPUTS = OUTPUTS | {"feature_tokens"}
    num_actions = 0        # a CNN has no action decoder of its own

    def __init__(self, num_channels: int, num_classes: int, feature_dim: int):
        super().__init__()
        self.num_channels, self.num_classes, self.feature_dim = num_channels, num_classes, feature_dim
        self.input_norm = nn.BatchNorm1d(num_channels)   # raw sensor units differ per channel
        self.head = nn.Linear(feature_dim, num_classes)

    def check_input(self, x: torch.Tensor) -> None:
        check_rank(x, [None, self.num_channels, None])
        check_finite_input(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, T) -> features (B, D, L)."""
        self.check_input(x)
        return self.body(self.input_norm(x))

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, D, L) -> logits (B, n_cls): global average pool + Linear."""
        check_rank(features, [None, self.feature_dim, None], name="features")
        return self.head(features.mean(dim=-1))

    def forward(self, x: torch.Tensor, mix=None) -> Outputs:
        """mix: optional features -> features map applied before decode (the workspace read-out);
        `features` are always the encoder's own."""
        features = self.encode(x)
        return Outputs(logits=self.decode(features if mix is None else mix(features)), features=features)

    def feature_length(self, T: int) -> int:
        """Time steps L of the features for a T-sample window (each stride-s conv: ceil(L / s))."""
        for s in self.strides:
            T = math.ceil(T / s)
        return T

    def token_adapter(self, num_tokens: int, dim_code: int, input_length: int = 512) -> TokenAdapter:
        """A fresh adapter from this model's features to a teacher grid of `num_tokens` tokens."""
        return TokenAdapter(self.feature_dim, num_tokens, dim_code, self.cfg.adapter_dim,
                            self.cfg.adapter_heads, self.feature_length(input_length))
