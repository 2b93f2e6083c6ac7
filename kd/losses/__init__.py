"""Distillation losses, one method per file: a pure `xxx_loss(...)` function plus a thin module whose
`forward(s_out, t_out)` (two `kd.outputs.Outputs`) returns one named, already-weighted term. `requires`
names the fields a loss reads from BOTH the student and the teacher (checked at config load:
kd/contract.py)."""
from __future__ import annotations

from typing import Dict

import torch.nn as nn

from kd.losses.action_kl import ActionKL, action_kl_loss
from kd.losses.attr import ATTRIBUTES, AttrKD, attr_loss
from kd.losses.code_kl import CodeKL, code_kl_loss
from kd.losses.feature import FeatureHint, feature_hint_loss
from kd.losses.logit_kd import LogitKD, logit_kd_loss
from kd.losses.sp import SimilarityPreserving, sp_loss
from kd.losses.sub_kl import SubKL, sub_kl_loss

LOSSES: Dict[str, type] = {
    "logit_kd": LogitKD,
    "attr": AttrKD,
    "code_kl": CodeKL,
    "action_kl": ActionKL,
    "sub_kl": SubKL,
    "feature": FeatureHint,
    "sp": SimilarityPreserving,
}

__all__ = ["LOSSES", "ATTRIBUTES", "build_loss", "logit_kd_loss", "attr_loss", "code_kl_loss",
           "action_kl_loss", "sub_kl_loss", "feature_hint_loss", "sp_loss"]


def _known(name: str) -> type:
    if name not in LOSSES:
        raise ValueError(f"unknown KD loss {name!r}; known: {sorted(LOSSES)}")
    return LOSSES[name]


def build_loss(name: str, cfg, student_dims: Dict, teacher_dims: Dict) -> nn.Module:
    """cfg: that loss's LossConfig; dims: {"feature_dim": D, "feature_len": L} of each side (feature hint)."""
    return _known(name)(cfg, student_dims, teacher_dims)
