"""Shared pieces of the data layer: resampling, the window datasets, subject splits, checks.

Every data set ends as a `Splits`: three `torch.utils.data.Dataset`s whose items are dicts
`{"x": float32 [C, L], "y": int64 [], "subject": int64 [], "index": int64 []}` (the synthetic
set and HAPT's transition episodes add `"subaction": int64 [L]`, the truth at every time step, -1 where
there is none). Each dataset also exposes `labels` and `subjects` as numpy
int64 arrays [N], so summaries and class weights never touch the signal.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

SPLITS = ("train", "val", "test")
UNKNOWN_SUBJECT = -1   # subject id of windows whose subject is not known (npz without `subject`)


class DataError(ValueError):
    """Data that cannot be used as given; the message says what is wrong and what to change."""


# --------------------------------------------------------------------------- resampling
def resample(x: torch.Tensor, length: int) -> torch.Tensor:
    """Linear resampling of the last axis to `length` samples, endpoints kept (align_corners=True).

    Output sample j sits at source position j * (T - 1) / (length - 1). Returns `x` itself when
    T == length. Computed in x's dtype (float64 in gives float64 out).
    """
    if not torch.is_floating_point(x):
        raise DataError(f"resample needs a floating-point tensor, got {x.dtype}")
    if length < 1:
        raise DataError(f"resample length must be >= 1, got {length}")
    *lead, T = x.shape
    if T == length:
        return x
    flat = x.reshape(1, -1, T)                                                   # (1, M, T)
    out = F.interpolate(flat, size=length, mode="linear", align_corners=True)    # (1, M, L)
    return out.reshape(*lead, length)


def nearest_indices(T: int, length: int) -> np.ndarray:
    """Source index nearest to each output position of `resample` (ties round up). int64 [length]."""
    if length == 1:
        return np.zeros(1, dtype=np.int64)
    j = np.arange(length, dtype=np.int64)
    # round(j * (T-1) / (L-1)) in exact integer arithmetic
    return (2 * j * (T - 1) + (length - 1)) // (2 * (length - 1))


# --------------------------------------------------------------------------- datasets
class TensorWindows(Dataset):
    """In-memory windows: one preallocated float32 tensor [N, C, L], resampled once at build time."""

    def __init__(self, x: torch.Tensor, labels: np.ndarray, subjects: np.ndarray,
                 recordings: Optional[np.ndarray] = None, subaction: Optional[torch.Tensor] = None):
        if x.dtype != torch.float32 or x.dim() != 3:
            raise DataError(f"TensorWindows needs float32 [N, C, L], got {x.dtype} {tuple(x.shape)}")
        if not len(x) == len(labels) == len(subjects):
            raise DataError(f"x, labels, subjects disagree on N: {len(x)}, {len(labels)}, {len(subjects)}")
        self.x = x                                              # (N, C, L)
        self.labels = np.asarray(labels, dtype=np.int64)        # (N,)
        self.subjects = np.asarray(subjects, dtype=np.int64)    # (N,)
        self.recordings = recordings                            # (N,) source recording of each window, or None
        if subaction is not None and tuple(subaction.shape) != (len(x), x.shape[2]):
            raise DataError(f"subaction truth must be [N, L] = {[len(x), x.shape[2]]}, got {list(subaction.shape)}")
        self.subaction = subaction                              # (N, L) int64 truth per time step (-1: none), or None
        self.y = torch.from_numpy(self.labels)
        self.subject = torch.from_numpy(self.subjects)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        i = check_index(i, len(self))
        item = {"x": self.x[i], "y": self.y[i], "subject": self.subject[i], "index": torch.tensor(i, dtype=torch.int64)}
        if self.subaction is not None:
            item["subaction"] = self.subaction[i]
        return item


def check_index(i: int, n: int) -> int:
    i = int(i)
    if not 0 <= i < n:
        raise IndexError(f"window index {i} out of range for a split of {n} windows")
    return i


@dataclass
class Splits:
    """train / val / test datasets of one data set, plus what every consumer needs to know about them."""
    train: Dataset
    val: Dataset
    test: Dataset
    class_names: List[str]
    num_channels: int
    length: int
    name: str
    split: Dict[str, Any]                                    # how the split was made (JSON-able)
    details: Dict[str, Any] = field(default_factory=dict)    # data-set specific facts (JSON-able)

    def datasets(self) -> Dict[str, Dataset]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def info(self) -> Dict[str, Any]:
        """JSON-able summary: sizes, shapes, classes, class counts and subjects per split, split method."""
        sets = self.datasets()
        K = len(self.class_names)
        counts = {s: np.bincount(d.labels, minlength=K) for s, d in sets.items()}
        return {
            "name": self.name,
            "num_channels": self.num_channels,
            "length": self.length,
            "num_classes": K,
            "class_names": list(self.class_names),
            "windows": {**{s: len(d) for s, d in sets.items()}, "total": sum(len(d) for d in sets.values())},
            "class_counts": {s: dict(zip(self.class_names, map(int, c))) for s, c in counts.items()},
            "subjects": {s: known_subjects(d.subjects) for s, d in sets.items()},
            "split": self.split,
            **self.details,
        }


def known_subjects(subjects: np.ndarray) -> Optional[List[int]]:
    """Sorted subject ids, or None when the subjects are unknown."""
    ids = [int(s) for s in np.unique(subjects)]
    return None if ids == [UNKNOWN_SUBJECT] else ids


# --------------------------------------------------------------------------- splits
def default_count(n: int, fraction: float) -> int:
    """round(fraction * n), at least 1."""
    return max(1, int(math.floor(fraction * n + 0.5)))


def subject_split(subjects: np.ndarray, test: Optional[Sequence[int]], val: Optional[Sequence[int]],
                  test_fraction: float, val_fraction: float) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """Split window indices by subject.

    `test` / `val` None take the default: of the sorted subject ids not given to the other split,
    the last round(test_fraction * S) (>= 1) are test and the round(val_fraction * S) (>= 1) just
    before them are val; the rest is train. Returns (index arrays per split, JSON description).
    """
    known = [int(s) for s in np.unique(subjects)]
    given = {"test": _given("test", test, known), "val": _given("val", val, known)}
    both = sorted(set(given["test"] or []) & set(given["val"] or []))
    if both:
        raise DataError(f"subjects {both} are in both data.test_subjects and data.val_subjects; "
                        "a subject may be in one split only")
    test_ids = given["test"]
    if test_ids is None:
        pool = [s for s in known if s not in (given["val"] or [])]
        test_ids = pool[-default_count(len(known), test_fraction):]
    val_ids = given["val"]
    if val_ids is None:
        pool = [s for s in known if s not in test_ids]
        val_ids = pool[-default_count(len(known), val_fraction):]
    ids = {"train": [s for s in known if s not in test_ids and s not in val_ids],
           "val": sorted(val_ids), "test": sorted(test_ids)}
    index = {name: np.flatnonzero(np.isin(subjects, ids[name])) for name in SPLITS}
    for name in SPLITS:
        if len(index[name]) == 0:
            raise DataError(f"the {name} split is empty: it gets subjects {ids[name]} (test={ids['test']}, "
                            f"val={ids['val']}, train={ids['train']}, subjects in the data: {known}); "
                            "change data.test_subjects / data.val_subjects")
    how = {"method": "by subject",
           "train_subjects": ids["train"], "val_subjects": ids["val"], "test_subjects": ids["test"],
           "test_subjects_from": "data.test_subjects" if test is not None else
           f"default: the last {default_count(len(known), test_fraction)} of the sorted subject ids not in val",
           "val_subjects_from": "data.val_subjects" if val is not None else
           f"default: the last {default_count(len(known), val_fraction)} of the sorted subject ids not in test"}
    return index, how


def _given(split: str, asked: Optional[Sequence[int]], known: List[int]) -> Optional[List[int]]:
    if asked is None:
        return None
    asked = sorted({int(s) for s in asked})
    missing = [s for s in asked if s not in known]
    if missing:
        raise DataError(f"data.{split}_subjects asks for subjects {missing} that are not in the data "
                        f"(its subjects: {known})")
    return asked


def block_split(n: int, val_fraction: float, test_fraction: float) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """Contiguous blocks by window index: train first, then val, then test (the last windows).

    Used when subjects are unknown: windows of one recording are usually stored together, so
    blocks keep most recordings inside one split (only a recording cut by a block edge is shared).
    """
    for key, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < frac < 1.0:
            raise DataError(f"data.npz.{key}={frac} must lie in (0, 1)")
    n_test = int(math.floor(test_fraction * n + 0.5))
    n_val = int(math.floor(val_fraction * n + 0.5))
    bounds = {"train": (0, n - n_test - n_val), "val": (n - n_test - n_val, n - n_test), "test": (n - n_test, n)}
    for name, (a, b) in bounds.items():
        if b <= a:
            raise DataError(f"the {name} split is empty: {n} windows with data.npz.val_fraction={val_fraction}, "
                            f"data.npz.test_fraction={test_fraction}; give more windows or other fractions")
    index = {name: np.arange(a, b) for name, (a, b) in bounds.items()}
    how = {"method": "contiguous blocks by window index (no subject ids in the data)",
           "val_fraction": val_fraction, "test_fraction": test_fraction,
           "blocks": {name: [int(a), int(b)] for name, (a, b) in bounds.items()}}
    return index, how


# --------------------------------------------------------------------------- checks
def check_labels(labels: np.ndarray, class_names: Sequence[str], what: str) -> np.ndarray:
    """Integer labels in [0, len(class_names)); returns them as int64."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{what} labels must be a 1-D integer array, got {labels.dtype} shape {labels.shape}")
    bad = labels[(labels < 0) | (labels >= len(class_names))]
    if len(bad):
        raise DataError(f"{what} has labels {sorted({int(b) for b in bad})} outside 0..{len(class_names) - 1} "
                        f"({len(class_names)} class names: {list(class_names)}); fix the labels or the class names")
    return labels.astype(np.int64)


def check_finite(x: np.ndarray, what: str, channel_axis: int) -> None:
    """x: [N, ., .] items along axis 0; raise naming the first item, channel and sample that is NaN or inf."""
    bad = ~np.isfinite(x)
    if bad.any():
        where = np.argwhere(bad)[0]
        time_axis = 3 - channel_axis   # the axis that is neither items (0) nor channels
        raise DataError(f"{what} {int(where[0])} has a non-finite value (NaN or inf) in channel "
                        f"{int(where[channel_axis])} at sample {int(where[time_axis])}; clean or drop it")


def check_length(length: int) -> int:
    if length < 2:
        raise DataError(f"data.length={length} must be >= 2")
    return int(length)


def as_list(value: Optional[Sequence[Any]]) -> Optional[List[Any]]:
    """OmegaConf ListConfig / tuple / None -> plain list / None."""
    return None if value is None else list(value)
