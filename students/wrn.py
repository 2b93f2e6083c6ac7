"""1-D Wide Residual Networks for wearable windows [B, C, T].

Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016 (https://arxiv.org/abs/1605.07146).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from students.cnn import CNNStudent, check_odd_kernel, same_conv


class PreActBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-dropout-conv; a 1x1 conv shortcut (on the pre-activation) when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int, kernel: int, dropout: float):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm1d(c_in), nn.BatchNorm1d(c_out)
        self.conv1 = same_conv(c_in, c_out, kernel, stride)
        self.conv2 = same_conv(c_out, c_out, kernel)
        self.drop = nn.Dropout(dropout)
        changes = stride != 1 or c_in != c_out
        self.shortcut = nn.Conv1d(c_in, c_out, 1, stride=stride, bias=False) if changes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(o)
        o = self.conv2(self.drop(F.relu(self.bn2(self.conv1(o)))))
        return o + skip


class WRN1d(CNNStudent):
    """WRN-depth-widen: stem conv (16, stride `cfg.wrn_stem_stride`, 1 in the paper) -> 3 groups of
    n = (depth-4)/6 blocks, widths 16k, 32k, 64k, strides 1, 2, 2 -> BN-ReLU. Features [B, 64k, T/4]
    (T/8 with a stride-2 stem)."""

    def __init__(self, depth: int, widen: int, num_channels: int, num_classes: int, cfg):
        if (depth - 4) % 6 or depth < 10:
            raise ValueError(f"WRN depth={depth} must be 6n+4 with n >= 1 (e.g. 16, 22, 28)")
        check_odd_kernel(cfg.kernel_size)
        if cfg.wrn_stem_stride < 1:
            raise ValueError(f"cnn.wrn_stem_stride={cfg.wrn_stem_stride} must be >= 1")
        widths = (16 * widen, 32 * widen, 64 * widen)
        super().__init__(num_channels, num_classes, feature_dim=widths[-1])
        self.cfg, self.depth, self.widen = cfg, depth, widen
        n, k = (depth - 4) // 6, cfg.kernel_size
        self.strides = (cfg.wrn_stem_stride, 1, 2, 2)      # stem, then the three groups
        layers, c = [same_conv(num_channels, 16, k, cfg.wrn_stem_stride)], 16
        for width, stride in zip(widths, self.strides[1:]):
            for i in range(n):
                layers.append(PreActBlock(c, width, stride if i == 0 else 1, k, cfg.dropout))
                c = width
        layers += [nn.BatchNorm1d(c), nn.ReLU()]
        self.body = nn.Sequential(*layers)


def wrn16_1(num_channels: int, num_classes: int, cfg) -> WRN1d:
    return WRN1d(16, 1, num_channels, num_classes, cfg)


def wrn16_3(num_channels: int, num_classes: int, cfg) -> WRN1d:
    return WRN1d(16, 3, num_channels, num_classes, cfg)
