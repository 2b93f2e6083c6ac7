"""What each model gives distillation, and the check of a pairing against it at config load.

Every model class declares which fields of `kd.outputs.Outputs` it fills: a student's forward
(`OUTPUTS`), a teacher's `teach` (`TEACH_OUTPUTS`). A student paired with a teacher that has shape tokens reaches
the teacher's token space even without its own: a CNN through a token adapter onto the frozen
codebook (`attr`, `code_dist`), and both CNN and VQShape students through the teacher's frozen action
decoder (`action_logits`) when the teacher has one. `check_pairing` holds every knowledge source and
every enabled KD loss against these declarations when the config is loaded, before anything is
built or trained; tests hold each declaration against the real model's outputs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import FrozenSet, Iterable

from kd.config import ConfigError, KD_LOSS_KEYS
from kd.outputs import TOKEN_OUTPUTS

def teacher_outputs(teacher_cfg) -> FrozenSet[str]:
    from teachers import teacher_class
    return teacher_class(teacher_cfg).TEACH_OUTPUTS


def student_outputs(arch: str, teacher_keys: Iterable[str]) -> FrozenSet[str]:
    """A student's outputs next to a teacher that gives `teacher_keys` (its reach into the teacher's
    token space included)."""
    from students import STUDENT_CLASSES
    if arch not in STUDENT_CLASSES:
        raise ConfigError(f"unknown student.arch {arch!r}; known: {sorted(STUDENT_CLASSES)}")
    own, t = set(STUDENT_CLASSES[arch].OUTPUTS), set(teacher_keys)
    if "attr" in t:
        own |= {"attr", "code_dist"}
    if "action_logits" in t:
        own.add("action_logits")
    return frozenset(own)


def extra_teacher_outputs(name: str, checkpoint: str):
    """'<name>/<key>' for every output of an extra teacher, read from its checkpoint's metadata."""
    from kd.config import config_from_dict
    meta_file = Path(checkpoint) / "meta.json"
    if not (Path(checkpoint) / "model.safetensors").is_file() or not meta_file.is_file():
        raise ConfigError(f"kd.extra_teachers {name!r}: no teacher checkpoint at {checkpoint!r}; train it first "
                          f"(distill.py stage=teacher run_dir=...) and give its <run_dir>/teacher")
    saved = config_from_dict(json.loads(meta_file.read_text())["config"])
    return {f"{name}/{k}" for k in teacher_outputs(saved.teacher)}


def check_outputs(names: Iterable[str], student_keys: Iterable[str], teacher_keys: Iterable[str],
                  teacher: str = "this teacher") -> None:
    """Raise when an enabled loss needs an output one side does not produce."""
    from kd.losses import LOSSES
    s, t = set(student_keys), set(teacher_keys)
    for name in names:
        if name not in LOSSES:
            raise ConfigError(f"unknown KD loss {name!r}; known: {sorted(LOSSES)}")
        for key in LOSSES[name].requires:
            for side, keys in ((f"the teacher ({teacher})", t), ("the student", s)):
                if key not in keys:
                    raise ConfigError(f"kd.{name} needs {key!r} from {side}, which does not produce it (it has "
                                      f"{sorted(keys)}); set kd.{name}.weight=0 or change the pairing")


def describe_teacher(teacher_cfg) -> str:
    if teacher_cfg.arch == "vqshape":
        return f"teacher.arch=vqshape with text_guidance={str(teacher_cfg.text_guidance).lower()}"
    return f"teacher.arch={teacher_cfg.arch}"


def check_pairing(cfg) -> None:
    """Every kd source and enabled KD loss against what the configured teacher(s) and student give.
    A teacher-only run (stage=teacher) distils nothing, so its kd settings are not held to its teacher."""
    if cfg.teacher.arch == "none" or cfg.stage == "teacher":
        return
    t_keys = set(teacher_outputs(cfg.teacher))
    s_keys = student_outputs(cfg.student.arch, t_keys)
    for extra in cfg.kd.extra_teachers:
        t_keys |= extra_teacher_outputs(extra.name, extra.checkpoint)
    if cfg.kd.workspace.enabled:
        tokens = sorted(k for k in t_keys if k.split("/")[-1] in TOKEN_OUTPUTS)
        for i, src in enumerate(cfg.kd.sources):
            if src.tokens not in tokens:
                raise ConfigError(f"kd.sources[{i}] ({src.name!r}) reads teacher output {src.tokens!r}, which "
                                  f"{describe_teacher(cfg.teacher)} does not produce; token outputs it has: {tokens}")
    check_outputs([n for n in KD_LOSS_KEYS if cfg.kd[n].weight > 0], s_keys, t_keys, describe_teacher(cfg.teacher))
