"""A user's own windows stored in one `.npz` file.

Keys: `X` [N, T, C] (data.npz.layout="NTC") or [N, C, T] ("NCT"); `y` [N] integer labels;
optional `subject` [N] integer ids; optional `class_names` [K] strings (data.npz.class_names wins).

Split: with `subject`, by subject; data.test_subjects / data.val_subjects choose, and when None
the default takes the sorted unique subject ids, the last round(20%) (>= 1) as test and the
round(15%) (>= 1) just before them as validation. Without `subject`: contiguous blocks by window
index (train, then val, then test = the last windows) sized by data.npz.val_fraction /
test_fraction; every window's subject is then -1 (unknown).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

from .core import (UNKNOWN_SUBJECT, DataError, Splits, TensorWindows, as_list, block_split, check_finite,
                   check_labels, check_length, resample, subject_split)

TEST_FRACTION = 0.2    # default subject split: last ~20% of the sorted subject ids are test ...
VAL_FRACTION = 0.15    # ... and the ~15% before them validation


def load_npz(path: Any) -> Dict[str, np.ndarray]:
    if path is None:
        raise DataError("data.npz.path is not set; give the .npz file, e.g. data.npz.path=my_windows.npz")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"npz file {str(path)!r} does not exist (data.npz.path)")
    with np.load(path, allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    for key in ("X", "y"):
        if key not in data:
            raise DataError(f"npz file {str(path)!r} has no {key!r} array (it has {sorted(data)}); "
                            "it needs X [N, T, C] or [N, C, T] and y [N]")
    return data


def windows_nct(X: np.ndarray, layout: str) -> np.ndarray:
    """X in the file's layout -> [N, C, T], with the checks that catch a wrong layout."""
    if layout not in ("NTC", "NCT"):
        raise DataError(f"data.npz.layout={layout!r} must be 'NTC' or 'NCT'")
    if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
        raise DataError(f"npz X must hold numbers, got dtype {X.dtype}")
    if X.ndim != 3:
        raise DataError(f"npz X must be 3-D [N, T, C] or [N, C, T] (data.npz.layout={layout!r}), "
                        f"got shape {X.shape}")
    x = X if layout == "NCT" else X.transpose(0, 2, 1)      # (N, C, T)
    N, C, T = x.shape
    if C > T:
        other = "NCT" if layout == "NTC" else "NTC"
        raise DataError(f"npz X has shape {X.shape}: with data.npz.layout={layout!r} that is {C} channels "
                        f"of {T} samples, more channels than samples; is the layout data.npz.layout={other!r}?")
    check_finite(x, "npz window", channel_axis=1)
    return x


def class_names_of(data: Dict[str, np.ndarray], given: Any) -> List[str]:
    if given is not None:
        return [str(c) for c in given]
    if "class_names" in data:
        return [str(c) for c in data["class_names"]]
    raise DataError("no class names: give data.npz.class_names=[...] or store a `class_names` array in the npz file")


def per_window(data: Dict[str, np.ndarray], key: str, n: int) -> np.ndarray:
    a = np.asarray(data[key])
    if a.shape != (n,):
        raise DataError(f"npz {key!r} must have shape ({n},), one entry per window of X, got {a.shape}")
    return a


def build_npz(cfg: Any) -> Splits:
    c = cfg.npz
    length = check_length(cfg.length)
    data = load_npz(c.path)
    x = windows_nct(data["X"], c.layout)                                             # (N, C, T)
    class_names = class_names_of(data, as_list(c.class_names))
    labels = check_labels(per_window(data, "y", len(x)), class_names, "npz y")
    if "subject" in data:
        subjects = per_window(data, "subject", len(x))
        if not np.issubdtype(subjects.dtype, np.integer):
            raise DataError(f"npz 'subject' must hold integer ids, got {subjects.dtype}")
        subjects = subjects.astype(np.int64)
        index, how = subject_split(subjects, as_list(cfg.test_subjects), as_list(cfg.val_subjects),
                                   TEST_FRACTION, VAL_FRACTION)
    else:
        if cfg.test_subjects is not None or cfg.val_subjects is not None:
            raise DataError("data.test_subjects / data.val_subjects are set but the npz file has no 'subject' "
                            "array; add one or leave them null")
        subjects = np.full(len(x), UNKNOWN_SUBJECT, dtype=np.int64)
        index, how = block_split(len(x), c.val_fraction, c.test_fraction)
    # float64 files are resampled in float64, everything else in float32 (large files stay affordable)
    x = np.ascontiguousarray(x, dtype=np.float64 if x.dtype == np.float64 else np.float32)
    xs = resample(torch.from_numpy(x), length).float()                              # (N, C, L)
    sets = {s: TensorWindows(xs[i], labels[i], subjects[i]) for s, i in index.items()}
    details = {"source": str(c.path), "layout": c.layout, "resampled": f"{x.shape[2]} -> {length}"}
    return Splits(**sets, class_names=class_names, num_channels=x.shape[1], length=length,
                  name="npz", split=how, details=details)
