"""A small 1-D ResNet for wearable windows [B, C, T].

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (https://arxiv.org/abs/1512.03385).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from students.cnn import CNNStudent, check_odd_kernel, same_conv


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN + shortcut (1x1 conv + BN when the shape changes), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int, kernel: int):
        super().__init__()
        self.conv1, self.bn1 = same_conv(c_in, c_out, kernel, stride), nn.BatchNorm1d(c_out)
        self.conv2, self.bn2 = same_conv(c_out, c_out, kernel), nn.BatchNorm1d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv1d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm1d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(o)) + self.shortcut(x))


class ResNet1d(CNNStudent):
    """Stem conv k=7 stride 2 (w) -> one basic block per stage, widths w, 2w, 4w, strides 1, 2, 2.
    Features [B, 4w, T/8]."""

    strides = (2, 1, 2, 2)   # stem, then the three stages

    def __init__(self, num_channels: int, num_classes: int, cfg):
        check_odd_kernel(cfg.kernel_size)
        w, k = cfg.resnet_width, cfg.kernel_size
        super().__init__(num_channels, num_classes, feature_dim=4 * w)
        self.cfg = cfg
        self.body = nn.Sequential(
            nn.Conv1d(num_channels, w, 7, stride=2, padding=3, bias=False), nn.BatchNorm1d(w), nn.ReLU(),
            BasicBlock(w, w, 1, k), BasicBlock(w, 2 * w, 2, k), BasicBlock(2 * w, 4 * w, 2, k))


def resnet_small(num_channels: int, num_classes: int, cfg) -> ResNet1d:
    return ResNet1d(num_channels, num_classes, cfg)
