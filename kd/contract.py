"""What each model gives distillation, and the check of a pairing against it at config load.

Every model class declares which fields of `kd.outputs.Outputs` it fills: a student's forward
(`OUTPUTS`), a teacher's `teach` (`TEACH_OUTPUTS`). A student paired with a teacher that has shape tokens reaches
the teacher's token space even without its own: a CNN through a token adapter onto the frozen
codebook (`attr`, `code_dist`), and both CNN and VQShape students through the teacher's frozen action
decoder (`action_logits`) when the teacher has one; a CNN student of an ordered-alignment teacher also
gets a sub-action head on its adapter tokens (`sub_logits`). `check_pairing` holds every knowledge source and
every enabled KD loss against these declarations when the config is loaded, before anything is
built or trained; tests hold each declaration against the real model's outputs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, FrozenSet, Iterable, Optional

from kd.config import ConfigError, KD_LOSS_KEYS
from kd.outputs import TOKEN_OUTPUTS

def teacher_outputs(teacher_cfg) -> FrozenSet[str]:
    """What the configured teacher's `teach` fills: its class's TEACH_OUTPUTS, or its `teach_outputs(cfg)`
    where an option adds a field (an ordered-alignment MMVQShape's sub_logits)."""
    from teachers import teacher_class
    cls = teacher_class(teacher_cfg)
    declared = getattr(cls, "teach_outputs", None)
    return frozenset(declared(teacher_cfg)) if declared is not None else cls.TEACH_OUTPUTS


def student_outputs(arch: str, teacher_keys: Iterable[str]) -> FrozenSet[str]:
    """A student's outputs next to a teacher that gives `teacher_keys` (its reach into the teacher's
    token space included)."""
    from students import STUDENT_CLASSES
    if arch not in STUDENT_CLASSES:
        raise ConfigError(f"unknown student.arch {arch!r}; known: {sorted(STUDENT_CLASSES)}")
    own, t = set(STUDENT_CLASSES[arch].OUTPUTS), set(teacher_keys)
    adapter = "attr" not in own                     # a CNN reaches the token space through a token adapter
    if "attr" in t:
        own |= {"attr", "code_dist"}
    if "action_logits" in t:
        own.add("action_logits")
    if "sub_logits" in t and "attr" in t and adapter:   # a sub-action head on the adapter's tokens
        own.add("sub_logits")
    return frozenset(own)


# Losses on the teacher's token space: a CNN student reaches it through an adapter onto the main
# teacher's frozen codebook and action decoder, so these read the main teacher only.
TOKEN_LOSSES = ("attr", "code_kl", "action_kl", "sub_kl")


def loss_teacher(kd_cfg, loss: str) -> Optional[str]:
    """The extra teacher a KD loss reads: the one whose tokens its source reads (None: the main teacher)."""
    src = kd_cfg[loss].source
    tokens = next((s.tokens for s in kd_cfg.sources if s.name == src), "")
    return tokens.split("/", 1)[0] if "/" in tokens else None


def extra_teacher_outputs(name: str, checkpoint: str) -> FrozenSet[str]:
    """The fields an extra teacher's `teach` fills, read from its checkpoint's metadata."""
    from kd.config import config_from_dict
    meta_file = Path(checkpoint) / "meta.json"
    if not (Path(checkpoint) / "model.safetensors").is_file() or not meta_file.is_file():
        raise ConfigError(f"kd.extra_teachers {name!r}: no teacher checkpoint at {checkpoint!r}; train it first "
                          f"(distill.py stage=teacher run_dir=...) and give its <run_dir>/teacher")
    saved = config_from_dict(json.loads(meta_file.read_text())["config"])
    return teacher_outputs(saved.teacher)


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


def check_pairing(cfg, extra_outputs: Optional[Dict[str, FrozenSet[str]]] = None) -> None:
    """Every kd source and enabled KD loss against what the configured teacher(s) and student give.
    A teacher-only run (stage=teacher) distils nothing, so its kd settings are not held to its teacher."""
    if cfg.teacher.arch == "none" or cfg.stage == "teacher":
        return
    main = set(teacher_outputs(cfg.teacher))
    s_keys = student_outputs(cfg.student.arch, main)
    known = extra_outputs or {}
    extras = {e.name: known[e.name] if e.name in known else extra_teacher_outputs(e.name, e.checkpoint)
              for e in cfg.kd.extra_teachers}
    if cfg.kd.workspace.enabled:
        tokens = sorted([k for k in main if k in TOKEN_OUTPUTS] +
                        [f"{n}/{k}" for n, keys in extras.items() for k in keys if k in TOKEN_OUTPUTS])
        for i, src in enumerate(cfg.kd.sources):
            if src.tokens not in tokens:
                raise ConfigError(f"kd.sources[{i}] ({src.name!r}) reads teacher output {src.tokens!r}, which "
                                  f"{describe_teacher(cfg.teacher)} does not produce; token outputs it has: {tokens}")
    for name in (n for n in KD_LOSS_KEYS if cfg.kd[n].weight > 0):
        who = loss_teacher(cfg.kd, name)
        if who is None:
            check_outputs([name], s_keys, main, describe_teacher(cfg.teacher))
            continue
        if who not in extras:
            raise ConfigError(f"kd.{name}.source={cfg.kd[name].source!r} reads teacher {who!r}, which is not in "
                              f"kd.extra_teachers {sorted(extras)}")
        if name in TOKEN_LOSSES:
            raise ConfigError(f"kd.{name} reads the main teacher's token space; bind it to a source of the main "
                              f"teacher (kd.{name}.source), not to extra teacher {who!r}")
        check_outputs([name], s_keys, extras[who], f"kd.extra_teachers {who!r}")
