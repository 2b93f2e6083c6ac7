"""The checks a config passes at load, before anything is built: each key's allowed values (CHOICES), each
number's range (RANGES), and the rules that tie keys together (a pairing's sources, caches, stages)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import List

from omegaconf import DictConfig, OmegaConf

from kd.config import ATTRIBUTES, KD_LOSS_KEYS, ConfigError


CHOICES = {
    "stage": ("teacher", "student", "all"),
    "data.name": ("watch", "npz", "synthetic", "hapt"),
    "data.hapt.task": ("all", "activities", "episodes"),
    "teacher.alignment.chain": ("cyclic", "once"),
    "data.npz.layout": ("NTC", "NCT"),
    "teacher.fusion.teach_keys": ("class", "vocab"),
    "teacher.alignment.target": ("none", "ordered", "set"),
    "kd.coef": ("fixed", "dynamic"),
    "train.mixed_precision": ("no", "fp16", "bf16"),
    "train.nonfinite": ("stop", "skip"),
    "train.select": ("best_val", "last"),
}


# VQShape options, the same for the teacher's and the student's VQShape
VQSHAPE_CHOICES = {
    "loss_scale": ("normalized", "input"),
    "code_input": ("token", "subsequence"),
    "head_arch": ("flat", "conv"),
    "decoder_input": ("tokens", "spans", "span_overlap"),
    "span_init": ("none", "tiling"),
}
CHOICES.update({f"{side}.vqshape.{k}": v for side in ("teacher", "student") for k, v in VQSHAPE_CHOICES.items()})


@dataclass(frozen=True)
class Range:
    """An interval a number must lie in; `hint` says what the number is (in the error)."""
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    hint: str = ""

    def check(self, key: str, value) -> None:
        if value is None or ((value > self.low if self.low_open else value >= self.low)
                             and (value < self.high if self.high_open else value <= self.high)):
            return
        if self.high == math.inf:
            rule = f"be {'>' if self.low_open else '>='} {self.low:g}"
        else:
            rule = f"lie in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        raise ConfigError(f"{key}={value} must {rule}" + (f" ({self.hint})" if self.hint else ""))


RANGES = {
    "kd.alpha": Range(0, 1, hint="(1 - alpha) * CE + alpha * KD"),
    "kd.sub_kl.context": Range(0, hint="time positions either side a student's sub-action head reads; 0: the token alone"),
    "teacher.members": Range(1, hint="1: a single teacher network"),
    "teacher.alignment.p_stay": Range(0, 1, True, True),
    "teacher.alignment.code_decay": Range(0, 1, high_open=True),
    "teacher.alignment.code_smoothing": Range(0, low_open=True),
    "teacher.alignment.scores_from_step": Range(0, hint="the step the E-step switches to the scores; null: never"),
    "teacher.alignment.context": Range(0, hint="time bins either side of a token"),
    "teacher.alignment.layers": Range(0, hint="0: an MLP per token; L: L convolutions over the time bins"),
    "train.ema": Range(0, 1, high_open=True, hint="the decay of the weight average; 0 = off"),
    "train.mixup": Range(0, hint="the Beta(a, a) parameter; 0 = off"),
    "train.augment.scale": Range(0, hint="0 = off"),
    "train.augment.jitter": Range(0, hint="0 = off"),
    "train.augment.shift": Range(0, 0.5, hint="a fraction of the window, either way; 0 = off"),
}


def derive_window_length(cfg: DictConfig, mine: DictConfig) -> None:
    """data.length is the one window length: each VQShape's len_input and num_patch follow from it.
    Writing either by hand is an error unless it agrees."""
    length = cfg.data.length
    for side in ("teacher", "student"):
        v = cfg[side].vqshape
        if length % v.patch_size:
            if cfg[side].arch in ("vqshape", "vqshape_student"):
                raise ConfigError(f"data.length={length} must be a multiple of {side}.vqshape.patch_size="
                                  f"{v.patch_size} (the VQShape patches); change one of them")
            continue
        derived = {"len_input": length, "num_patch": length // v.patch_size}
        for key, value in derived.items():
            given = OmegaConf.select(mine, f"{side}.vqshape.{key}")
            if given is not None and given != value:
                raise ConfigError(f"{side}.vqshape.{key}={given} disagrees with data.length={length} "
                                  f"(it follows from data.length: {key}={value}); remove {side}.vqshape.{key}")
            v[key] = value


def validate_config(cfg: DictConfig) -> None:
    """Choices, ranges, then the rules that tie keys together."""
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {list(allowed)}")
    for key, rng in RANGES.items():
        rng.check(key, OmegaConf.select(cfg, key))
    for side in ("teacher", "student"):
        v = cfg[side].vqshape
        for name in ("enc", "tok", "dec"):
            if v.dim % v[f"{name}_heads"]:
                raise ConfigError(f"{side}.vqshape.dim={v.dim} must be divisible by "
                                  f"{side}.vqshape.{name}_heads={v[f'{name}_heads']}")
    if cfg.data.name == "hapt" and (cfg.data.hapt.root is None or not (Path(cfg.data.hapt.root) / "RawData").is_dir()):
        raise ConfigError(f"data.name=hapt reads the UCI HAPT folder at data.hapt.root={cfg.data.hapt.root!r}, "
                          "which has no RawData/ folder: set data.hapt.root to the folder holding RawData/")
    if cfg.teacher.members > 1 and cfg.teacher.arch in ("vqshape", "none"):
        raise ConfigError(f"teacher.members={cfg.teacher.members} builds an ensemble of CNN teachers; "
                          f"teacher.arch={cfg.teacher.arch!r} is not a CNN: set teacher.members=1 or a CNN teacher.arch")
    a = cfg.train.augment
    # windows changed at every step (augment, then mixup) are shown to the teacher live, never looked up
    changed = [k for k, on in (("train.augment", any(a[k] > 0 for k in ("scale", "jitter", "shift"))),
                               ("train.mixup", cfg.train.mixup > 0)) if on]
    if changed and cfg.teacher.arch != "none" and cfg.stage != "teacher":
        if cfg.train.cache_teacher:
            raise ConfigError(f"{changed[0]} changes every training window at each step, which a cache of the "
                              f"unchanged windows cannot answer: set train.cache_teacher=false")
        if cfg.train.mixup > 0 and cfg.teacher.arch == "vqshape" and cfg.teacher.text_guidance \
                and cfg.teacher.fusion.teach_keys == "class":
            raise ConfigError("train.mixup > 0 with a teacher that teaches with the class text of one label "
                              "(teacher.fusion.teach_keys=class), which a mixed window does not have: set "
                              "teacher.fusion.teach_keys=vocab (no label) or train.mixup=0")
    if cfg.train.teacher_ssl_epochs > 0 and cfg.teacher.arch not in ("vqshape", "none"):
        raise ConfigError(f"train.teacher_ssl_epochs={cfg.train.teacher_ssl_epochs} needs a VQShape teacher "
                          f"(teacher.arch={cfg.teacher.arch!r} has no self-supervised terms); set it to 0")
    names = [s.name for s in cfg.kd.sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"kd.sources names must be unique, got {names}")
    extra = [t.name for t in cfg.kd.extra_teachers]
    if extra and cfg.teacher.arch == "none":
        raise ConfigError("kd.extra_teachers needs a main teacher (teacher.arch is 'none')")
    for t in cfg.kd.extra_teachers:
        if not t.name or "/" in t.name or not t.checkpoint:
            raise ConfigError(f"each kd.extra_teachers entry needs a name without '/' and a checkpoint, got {dict(t)}")
    if len(set(extra)) != len(extra):
        raise ConfigError(f"kd.extra_teachers names must be unique, got {extra}")
    if cfg.teacher.arch != "none":   # checks of the distillation settings, before anything trains
        check_kd(cfg.kd, names)


def check_kd(kd: DictConfig, source_names: List[str]) -> None:
    """Cross-key checks of a pairing's KD settings: every enabled loss's source is a declared source,
    and dynamic coefficients have the workspace they come from."""
    for name in KD_LOSS_KEYS:
        c = kd[name]
        if c.weight > 0 and c.source is not None and c.source not in source_names:
            raise ConfigError(f"kd.{name}.source={c.source!r} is not one of kd.sources {source_names}; "
                              f"add a source named {c.source!r} to kd.sources or change kd.{name}.source")
        if c.weight > 0 and "temperature" in c and c.temperature <= 0:
            raise ConfigError(f"kd.{name}.temperature={c.temperature} must be > 0")
    if kd.attr.weight > 0:
        unknown = sorted(set(kd.attr.attr_weights) - set(ATTRIBUTES))
        if unknown:
            raise ConfigError(f"kd.attr.attr_weights has unknown attributes {unknown}; valid: {list(ATTRIBUTES)}")
        if not any(kd.attr.attr_weights.values()):
            raise ConfigError("kd.attr.attr_weights are all 0, so kd.attr would add nothing; set kd.attr.weight=0 "
                              "to switch it off")
    if kd.coef == "dynamic" and not kd.workspace.enabled:
        raise ConfigError("kd.coef=dynamic takes its coefficients from the workspace: set "
                          "kd.workspace.enabled=true, or use kd.coef=fixed")
