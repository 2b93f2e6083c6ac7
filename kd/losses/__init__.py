"""Distillation losses, one method per file: a pure `xxx_loss(...)` function plus a thin module whose
`forward(s_out, t_out)` returns one named, already-weighted term. `requires` names the output keys a
loss reads from BOTH the student and the teacher."""
from __future__ import annotations

from typing import Dict, Iterable

import torch.nn as nn

from kd.losses.action_kl import ActionKL, action_kl_loss
from kd.losses.attr import ATTRIBUTES, AttrKD, attr_loss
from kd.losses.code_kl import CodeKL, code_kl_loss
from kd.losses.feature import FeatureHint, feature_hint_loss
from kd.losses.logit_kd import LogitKD, logit_kd_loss
from kd.losses.sp import SimilarityPreserving, sp_loss

LOSSES: Dict[str, type] = {
    "logit_kd": LogitKD,
    "attr": AttrKD,
    "code_kl": CodeKL,
    "action_kl": ActionKL,
    "feature": FeatureHint,
    "sp": SimilarityPreserving,
}

__all__ = ["LOSSES", "ATTRIBUTES", "build_loss", "check_outputs", "logit_kd_loss", "attr_loss", "code_kl_loss",
           "action_kl_loss", "feature_hint_loss", "sp_loss"]


def _known(name: str) -> type:
    if name not in LOSSES:
        raise ValueError(f"unknown KD loss {name!r}; known: {sorted(LOSSES)}")
    return LOSSES[name]


def build_loss(name: str, cfg, student_dims: Dict, teacher_dims: Dict) -> nn.Module:
    """cfg: that loss's LossConfig; dims: {"feature_dim": D, "feature_len": L} of each side (feature hint)."""
    return _known(name)(cfg, student_dims, teacher_dims)


def check_outputs(names: Iterable[str], student_keys: Iterable[str], teacher_keys: Iterable[str]) -> None:
    """Raise before training when an enabled loss needs an output one side does not produce."""
    s, t = set(student_keys), set(teacher_keys)
    for name in names:
        for key in _known(name).requires:
            for side, keys in (("student", s), ("teacher", t)):
                if key not in keys:
                    raise ValueError(f"kd.{name} needs {key!r} from the {side}, which this {side} does not "
                                     f"produce (it has {sorted(keys)}); set kd.{name}.weight=0 or change the pairing")
