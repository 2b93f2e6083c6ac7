"""Teachers. `TEACHERS` maps teacher.arch to a builder; any CNN student arch can also teach."""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch.nn as nn

from teachers.ensemble import Ensemble
from teachers.mmvqshape import MMVQShape
from kd.vqshape import VQShape
from students import CNN_ARCHS, STUDENT_CLASSES, build_student


def _vqshape(cfg, num_channels: int, num_classes: int, text: Optional[Dict]) -> nn.Module:
    if not cfg.text_guidance:
        return VQShape(cfg.vqshape, num_channels, num_classes)
    if text is None:
        raise ValueError("teacher.text_guidance=true needs the sub-action text bank")
    return MMVQShape(cfg.vqshape, cfg.fusion, num_channels, num_classes, **text, align=cfg.alignment)


def _student_as_teacher(arch: str) -> Callable:
    def build(cfg, num_channels: int, num_classes: int, text: Optional[Dict]) -> nn.Module:
        members = [build_student(arch, cfg.cnn, cfg.vqshape, num_channels, num_classes, freeze_shared=False)
                   for _ in range(cfg.members)]
        return members[0] if cfg.members == 1 else Ensemble(members)
    return build


TEACHERS: Dict[str, Callable] = {"vqshape": _vqshape}
TEACHERS.update({arch: _student_as_teacher(arch) for arch in CNN_ARCHS})


def teacher_class(cfg) -> type:
    """The class `build_teacher(cfg, ...)` builds, known from the config alone (kd/contract.py)."""
    if cfg.arch == "vqshape":
        return MMVQShape if cfg.text_guidance else VQShape
    if cfg.arch not in TEACHERS:
        raise ValueError(f"unknown teacher arch {cfg.arch!r}; known: {sorted(TEACHERS)}")
    return Ensemble if cfg.members > 1 else STUDENT_CLASSES[cfg.arch]


def build_teacher(cfg, num_channels: int, num_classes: int, text: Optional[Dict] = None) -> nn.Module:
    """cfg: the TeacherConfig node; text: MMVQShape's text tensors (vocab_emb, class_index, class_mask, label_emb)."""
    if cfg.arch not in TEACHERS:
        raise ValueError(f"unknown teacher arch {cfg.arch!r}; known: {sorted(TEACHERS)} "
                         f"(or 'none' for a no-teacher baseline)")
    return TEACHERS[cfg.arch](cfg, num_channels, num_classes, text)
