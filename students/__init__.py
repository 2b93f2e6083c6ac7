"""Time-series-only students. `STUDENTS` maps an arch name to a builder; a student never reads text."""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch.nn as nn

from students.resnet import ResNet1d, resnet_small
from students.vqshape_student import VQShapeStudent
from students.wrn import WRN1d, wrn16_1, wrn16_3


def _vqshape_student(cnn, vqshape, num_channels: int, num_classes: int, num_actions: int, freeze_shared: bool):
    return VQShapeStudent(vqshape, num_channels, num_classes, num_actions, freeze_shared=freeze_shared)


def _cnn(factory: Callable) -> Callable:
    def build(cnn, vqshape, num_channels: int, num_classes: int, num_actions: int, freeze_shared: bool):
        return factory(num_channels, num_classes, cnn)
    return build


# arch -> (the class it builds, known from the config alone: its declared outputs, kd/contract.py; its builder)
ARCHS: Dict[str, Tuple[type, Callable]] = {
    "wrn16_1": (WRN1d, _cnn(wrn16_1)),
    "wrn16_3": (WRN1d, _cnn(wrn16_3)),
    "resnet": (ResNet1d, _cnn(resnet_small)),
    "vqshape_student": (VQShapeStudent, _vqshape_student),
}
STUDENTS: Dict[str, Callable] = {arch: build for arch, (_, build) in ARCHS.items()}
STUDENT_CLASSES: Dict[str, type] = {arch: cls for arch, (cls, _) in ARCHS.items()}
# the archs that are CNNs (also teachers: teachers/__init__.py)
CNN_ARCHS = tuple(arch for arch, (cls, _) in ARCHS.items() if cls is not VQShapeStudent)


def build_student(arch: str, cnn, vqshape, num_channels: int, num_classes: int, num_actions: int = 0,
                  freeze_shared: bool = True) -> nn.Module:
    """cnn / vqshape: the CNNConfig / VQShapeConfig nodes; num_actions: the teacher's sub-action
    vocabulary size M (the VQShape student's frozen action decoder), 0 for none."""
    if arch not in STUDENTS:
        raise ValueError(f"unknown student arch {arch!r}; known: {sorted(STUDENTS)}")
    return STUDENTS[arch](cnn, vqshape, num_channels, num_classes, num_actions, freeze_shared)
