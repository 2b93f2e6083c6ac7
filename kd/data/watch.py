"""seglearn's bundled smartwatch IMU data set (the embedded default).

140 recordings [T_i, 6] (ax ay az wx wy wz, 50 Hz, T_i = 947..2618) of 7 shoulder exercises by
10 subjects (ids 1..10). Windows of `window` samples are cut with `stride` inside each recording
(optionally one more flush with the recording's end), resampled to `data.length`, and split by
subject, so no recording is shared between splits.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch

from .core import (DataError, Splits, TensorWindows, as_list, check_labels, check_length, resample,
                   subject_split)

TEST_FRACTION = 0.2   # default: subjects 9, 10 are test ...
VAL_FRACTION = 0.1    # ... and subject 8 is validation
SAMPLE_RATE_HZ = 50


def load_watch() -> Dict[str, Any]:
    """seglearn.datasets.load_watch(): X (list of [T_i, 6]), y, subject, y_labels."""
    # Imported here: seglearn pulls in pandas (~1 s), which only this data set needs.
    from seglearn.datasets import load_watch as _load
    return _load()


def window_starts(T: int, window: int, stride: int, cover_tail: bool) -> np.ndarray:
    """Start samples of the windows of one recording of T samples (T >= window)."""
    starts = np.arange(0, T - window + 1, stride)
    if cover_tail and starts[-1] != T - window:
        starts = np.append(starts, T - window)   # one last window flush with the end
    return starts


def check_recordings(recordings: Sequence[np.ndarray], window: int) -> int:
    """Every recording [T_i, C]: 2-D, one channel count, finite, at least `window` long. Returns C."""
    C = None
    for r, rec in enumerate(recordings):
        rec = np.asarray(rec)
        if rec.ndim != 2:
            raise DataError(f"recording {r} must be 2-D [T, C], got shape {rec.shape}")
        C = rec.shape[1] if C is None else C
        if rec.shape[1] != C:
            raise DataError(f"recording {r} has {rec.shape[1]} channels but recording 0 has {C}; "
                            "all recordings need the same channels")
        if len(rec) < window:
            raise DataError(f"recording {r} has {len(rec)} samples, shorter than the window of {window}; "
                            "lower data.watch.window or drop the recording")
        bad = np.argwhere(~np.isfinite(rec))
        if len(bad):
            t, c = bad[0]
            raise DataError(f"recording {r} has a non-finite value (NaN or inf) in channel {c} at sample {t}")
    if C is None:
        raise DataError("no recordings given")
    return C


def cut_windows(recordings: Sequence[np.ndarray], window: int, stride: int,
                cover_tail: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Recordings [T_i, C] -> windows float64 [N, C, window] and the recording index of each [N]."""
    if window < 2 or stride < 1:
        raise DataError(f"data.watch.window={window} must be >= 2 and data.watch.stride={stride} >= 1")
    check_recordings(recordings, window)
    windows: List[np.ndarray] = []
    source: List[np.ndarray] = []
    for r, rec in enumerate(recordings):
        starts = window_starts(len(rec), window, stride, cover_tail)
        idx = starts[:, None] + np.arange(window)                  # (n_r, window)
        windows.append(np.asarray(rec, dtype=np.float64)[idx].transpose(0, 2, 1))   # (n_r, C, window)
        source.append(np.full(len(starts), r))
    return np.concatenate(windows), np.concatenate(source)


def build_from_recordings(data: Dict[str, Any], cfg: Any, name: str = "watch") -> Splits:
    """`data` as load_watch returns it: X (list of [T_i, C]), y [R], subject [R], y_labels [K]."""
    w = cfg.watch
    length = check_length(cfg.length)
    class_names = [str(c) for c in data["y_labels"]]
    if not len(data["X"]) == len(data["y"]) == len(data["subject"]):
        raise DataError(f"{len(data['X'])} recordings but {len(data['y'])} labels and "
                        f"{len(data['subject'])} subject ids; give one of each per recording")
    rec_labels = check_labels(np.asarray(data["y"]), class_names, "the recordings'")
    rec_subjects = np.asarray(data["subject"], dtype=np.int64)
    windows, source = cut_windows(data["X"], w.window, w.stride, w.cover_tail)    # (N, C, W), (N,)
    x = resample(torch.from_numpy(windows), length).float()                        # (N, C, L)
    labels, subjects = rec_labels[source], rec_subjects[source]
    index, how = subject_split(subjects, as_list(cfg.test_subjects), as_list(cfg.val_subjects),
                               TEST_FRACTION, VAL_FRACTION)
    sets = {s: TensorWindows(x[i], labels[i], subjects[i], recordings=source[i]) for s, i in index.items()}
    details = {"source": "seglearn.datasets.load_watch", "sample_rate_hz": SAMPLE_RATE_HZ,
               "recordings": len(data["X"]), "window": w.window, "stride": w.stride,
               "cover_tail": w.cover_tail, "resampled": f"{w.window} -> {length}",
               "recordings_per_split": {s: int(len(np.unique(d.recordings))) for s, d in sets.items()}}
    return Splits(**sets, class_names=class_names, num_channels=x.shape[1], length=length,
                  name=name, split=how, details=details)


def build_watch(cfg: Any) -> Splits:
    return build_from_recordings(load_watch(), cfg)
