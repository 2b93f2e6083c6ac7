"""Synthetic HAR-like windows with ground-truth sub-actions at every time step.

Each window belongs to one class; a class is an ordered cycle of 5 primitive motions laid end
to end over `raw_length` samples with random durations (Dirichlet proportions, each segment at
least 8% of the window, or less when a window holds many segments). By default a window holds
one cycle from the class's first primitive; with `random_phase` it starts at a random primitive
of the cycle, and with `cycles_min` < `cycles_max` it holds round(c * 5) segments for c drawn
uniformly in [cycles_min, cycles_max] (less or more than one full cycle, wrapping around). Every primitive is a distinct waveform with random amplitude, offset and
phase, projected onto the channels by its own fixed channel pattern; then a per-subject gain and
offset per channel and Gaussian noise of std `noise` are applied. Segments are not forced to join
continuously: a segment boundary is a step in the signal.

Generation is lazy and deterministic: window i is made in `__getitem__` from a numpy Generator
seeded by (seed, i). Its subject (i % num_subjects) and class (a hash of (seed, i)) are known
without generating it, so splits and class counts cost nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .core import (DataError, Splits, as_list, check_index, check_length, nearest_indices, resample,
                   subject_split)

PRIMITIVES = ["rest", "rise", "fall", "fast_shake", "slow_sway", "tap", "dip", "hold_high", "ramp_saw",
              "damped_swing"]
CLASSES = {   # class name -> ordered sequence of primitives
    "reach": ["rest", "rise", "hold_high", "fall", "dip"],
    "shake": ["slow_sway", "fast_shake", "tap", "dip", "rest"],
    "lift": ["tap", "rise", "slow_sway", "fall", "rest"],
    "swing": ["damped_swing", "rest", "ramp_saw", "rise", "fall"],
    "press": ["rest", "dip", "hold_high", "tap", "fast_shake"],
    "wave": ["slow_sway", "damped_swing", "fast_shake", "ramp_saw", "hold_high"],
}
CLASS_NAMES = list(CLASSES)
CLASS_PRIMITIVE_IDS = np.array([[PRIMITIVES.index(p) for p in CLASSES[c]] for c in CLASS_NAMES])  # (6, 5)

MIN_SEGMENT_FRACTION = 0.08   # every segment is at least this share of the window
DIRICHLET_ALPHA = 2.0         # concentration of the random segment proportions
MIN_RAW_LENGTH = 50           # so the shortest segment still has a few samples
PATTERN_SEED = 7              # channel patterns are a fixed property of the primitives, not of `seed`
TEST_FRACTION = 0.2           # default split: last 20% of subject ids test ...
VAL_FRACTION = 0.1            # ... the 10% before them validation


# --------------------------------------------------------------------------- waveforms
# Each takes (n samples of the segment, raw window length T, rng) and returns a float64 [n] shape
# of unit scale; periods are fractions of T so the look does not depend on the sampling rate.
def _unit(n: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, n)


def _sine(n: int, period: float, rng: np.random.Generator) -> np.ndarray:
    return np.sin(2 * np.pi * np.arange(n) / period + rng.uniform(0, 2 * np.pi))


def _bump(n: int, rng: np.random.Generator) -> np.ndarray:
    centre, width = rng.uniform(0.3, 0.7), rng.uniform(0.05, 0.1)
    return np.exp(-0.5 * ((_unit(n) - centre) / width) ** 2)


def rest(n, T, rng):
    return np.zeros(n)


def rise(n, T, rng):
    return 0.5 - 0.5 * np.cos(np.pi * _unit(n))


def fall(n, T, rng):
    return 0.5 + 0.5 * np.cos(np.pi * _unit(n))


def fast_shake(n, T, rng):
    return _sine(n, T * rng.uniform(1 / 60, 1 / 36), rng)


def slow_sway(n, T, rng):
    return _sine(n, T * rng.uniform(1 / 6, 1 / 3), rng)


def tap(n, T, rng):
    return 1.5 * _bump(n, rng)


def dip(n, T, rng):
    return -1.5 * _bump(n, rng)


def hold_high(n, T, rng):
    return np.full(n, 1.5)


def ramp_saw(n, T, rng):
    phase = np.arange(n) / (T * rng.uniform(1 / 20, 1 / 10)) + rng.uniform()
    return 2.0 * (phase % 1.0) - 1.0


def damped_swing(n, T, rng):
    return np.exp(-rng.uniform(3, 6) * _unit(n)) * _sine(n, T * rng.uniform(1 / 25, 1 / 12), rng)


WAVES: Dict[str, Callable[[int, int, np.random.Generator], np.ndarray]] = {
    "rest": rest, "rise": rise, "fall": fall, "fast_shake": fast_shake, "slow_sway": slow_sway,
    "tap": tap, "dip": dip, "hold_high": hold_high, "ramp_saw": ramp_saw, "damped_swing": damped_swing,
}
assert list(WAVES) == PRIMITIVES


# --------------------------------------------------------------------------- cheap per-index facts
def _splitmix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrap-around arithmetic is the point)."""
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def class_of(seed: int, indices: np.ndarray) -> np.ndarray:
    """Class of each window index: uniform over CLASSES, a pure function of (seed, index). int64 [n]."""
    key = _splitmix64(np.array([seed], dtype=np.uint64))                  # (1,)
    h = _splitmix64(np.asarray(indices, dtype=np.uint64).reshape(-1) ^ key)
    return (h % np.uint64(len(CLASSES))).astype(np.int64)


def subject_of(indices: np.ndarray, num_subjects: int) -> np.ndarray:
    return np.asarray(indices, dtype=np.int64) % num_subjects


# --------------------------------------------------------------------------- generation
@dataclass(frozen=True)
class SyntheticSpec:
    """Everything needed to generate any window; small (no window data)."""
    num_channels: int
    num_subjects: int
    raw_length: int
    noise: float
    seed: int
    random_phase: bool
    cycles: Tuple[float, float]
    patterns: np.ndarray        # (P, C) channel pattern of each primitive
    subject_gain: np.ndarray    # (S, C)
    subject_offset: np.ndarray  # (S, C)

    @classmethod
    def from_config(cls, s: Any) -> "SyntheticSpec":
        check_synthetic(s)
        C, S = s.num_channels, s.num_subjects
        patterns = np.random.default_rng([PATTERN_SEED, C]).normal(size=(len(PRIMITIVES), C))
        patterns *= np.sqrt(C) / np.linalg.norm(patterns, axis=1, keepdims=True)   # (P, C), rms 1
        subj = np.random.default_rng([s.seed, 1])
        gain = np.exp(subj.normal(0.0, 0.25, size=(S, C)))
        offset = subj.normal(0.0, 0.5, size=(S, C))
        return cls(C, S, s.raw_length, float(s.noise), s.seed, bool(s.random_phase),
                   (float(s.cycles_min), float(s.cycles_max)), patterns, gain, offset)


def check_synthetic(s: Any) -> None:
    # num_subjects >= 3: train, val and test each need a subject of their own
    problems = [f"data.synthetic.{k}={getattr(s, k)} must be >= {lo}" for k, lo in
                (("num_windows", 1), ("num_channels", 1), ("num_subjects", 3), ("raw_length", MIN_RAW_LENGTH),
                 ("noise", 0), ("seed", 0)) if getattr(s, k) < lo]
    if not 0 < s.cycles_min <= s.cycles_max:
        problems.append(f"data.synthetic.cycles_min={s.cycles_min} and cycles_max={s.cycles_max} must satisfy "
                        f"0 < cycles_min <= cycles_max")
    if problems:
        raise DataError("; ".join(problems))


def segment_bounds(rng: np.random.Generator, T: int, k: int) -> np.ndarray:
    """k random segments over T samples: bounds [k + 1] from 0 to T, each segment >= MIN_SEGMENT_FRACTION
    (or half the mean share 1 / k, when k segments would not fit at that minimum)."""
    floor = min(MIN_SEGMENT_FRACTION, 0.5 / k)
    p = floor + (1 - k * floor) * rng.dirichlet(np.full(k, DIRICHLET_ALPHA))
    bounds = np.round(np.cumsum(p) * T).astype(np.int64)
    return np.concatenate([[0], bounds[:-1], [T]])


def window_primitives(spec: SyntheticSpec, rng: np.random.Generator, cycle: np.ndarray) -> np.ndarray:
    """The primitive ids of a window's segments in order: the class cycle from a start (0, or random
    with random_phase), round(c * len(cycle)) segments for c in [cycles_min, cycles_max]."""
    lo, hi = spec.cycles
    if not spec.random_phase and lo == hi == 1.0:
        return cycle                                  # the original layout; draws nothing from rng
    start = int(rng.integers(len(cycle))) if spec.random_phase else 0
    n = max(1, int(round(rng.uniform(lo, hi) * len(cycle))))
    return cycle[(start + np.arange(n)) % len(cycle)]


def generate_raw(spec: SyntheticSpec, index: int) -> Tuple[np.ndarray, np.ndarray]:
    """Window `index` at raw resolution: signal float64 [C, T] and primitive id per sample int64 [T]."""
    rng = np.random.default_rng([spec.seed, 0, int(index)])
    prims = window_primitives(spec, rng, CLASS_PRIMITIVE_IDS[class_of(spec.seed, np.array([index]))[0]])
    T = spec.raw_length
    bounds = segment_bounds(rng, T, len(prims))
    x = np.empty((spec.num_channels, T))
    sub = np.empty(T, dtype=np.int64)
    for p, a, b in zip(prims, bounds[:-1], bounds[1:]):
        level = rng.uniform(0.6, 1.4) * WAVES[PRIMITIVES[p]](b - a, T, rng) + rng.uniform(-0.3, 0.3)  # (b-a,)
        x[:, a:b] = spec.patterns[p][:, None] * level                                 # (C, b-a)
        sub[a:b] = p
    s = index % spec.num_subjects
    x = spec.subject_gain[s][:, None] * x + spec.subject_offset[s][:, None]
    x += spec.noise * rng.standard_normal(x.shape)    # drawn even at noise 0: same window, noise-free
    return x, sub


class SyntheticWindows(Dataset):
    """Lazy split: holds only the global window indices; window i is generated when asked for."""

    def __init__(self, spec: SyntheticSpec, indices: np.ndarray, length: int):
        self.spec = spec
        self.indices = np.asarray(indices, dtype=np.int64)           # (n,) global window indices
        self.length = length
        self.labels = class_of(spec.seed, self.indices)              # (n,)
        self.subjects = subject_of(self.indices, spec.num_subjects)  # (n,)
        self.nearest = nearest_indices(spec.raw_length, length)      # (L,) label grid of `resample`

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        i = check_index(i, len(self))
        x, sub = generate_raw(self.spec, self.indices[i])             # (C, T), (T,)
        return {"x": resample(torch.from_numpy(x), self.length).float(),   # (C, L)
                "y": torch.tensor(self.labels[i]), "subject": torch.tensor(self.subjects[i]),
                "index": torch.tensor(i, dtype=torch.int64),
                "subaction": torch.from_numpy(sub[self.nearest])}     # (L,)


def build_synthetic(cfg: Any) -> Splits:
    s = cfg.synthetic
    length = check_length(cfg.length)
    spec = SyntheticSpec.from_config(s)
    indices = np.arange(s.num_windows, dtype=np.int64)
    index, how = subject_split(subject_of(indices, s.num_subjects), as_list(cfg.test_subjects),
                               as_list(cfg.val_subjects), TEST_FRACTION, VAL_FRACTION)
    sets = {name: SyntheticWindows(spec, indices[i], length) for name, i in index.items()}
    details = {"lazy": True, "num_windows": s.num_windows, "num_subjects": s.num_subjects,
               "raw_length": s.raw_length, "resampled": f"{s.raw_length} -> {length}", "noise": s.noise,
               "seed": s.seed, "primitives": list(PRIMITIVES), "classes": {k: list(v) for k, v in CLASSES.items()}}
    return Splits(**sets, class_names=list(CLASS_NAMES), num_channels=s.num_channels, length=length,
                  name="synthetic", split=how, details=details)
