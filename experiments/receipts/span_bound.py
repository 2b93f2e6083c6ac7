"""How much can N ordered spans that follow the signal move on watch? A yardstick for `span_t_std`.

`span_t_std` (teachers/health.py) is the std over windows of each token slot's start t, averaged over
slots. For spans in slot order (the default teacher's tiling) it can only be large if the content
moves a lot between windows. This script measures it, with no model, for segmentations that follow the
signal by construction, on every watch window and channel (z-normalised, data.length samples):

- arclength(beta): N spans in order that split the window into equal shares of the density
  (1 - beta) / T + beta |dx_t| / sum |dx| (beta = 1: equal shares of the signal's total variation, so
  spans are short where the signal moves and long where it is still; beta = 0: the uniform tiling);
- random_free: N spans whose starts are uniform on [0, 1] and ignore the signal (slots unordered);
- random_sorted: the same starts sorted, so slot k is the k-th earliest span.

    python -m experiments.receipts.span_bound --num-token 32 --out experiments/results/span_bound.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict

import numpy as np
import torch

from kd.data.core import resample
from kd.data.watch import cut_windows, load_watch


def watch_series(window: int = 500, stride: int = 250, length: int = 512) -> np.ndarray:
    """Every watch window's channels as z-normalised rows (n, length)."""
    w, _ = cut_windows(load_watch()["X"], window, stride, True)
    x = resample(torch.from_numpy(w), length).numpy().reshape(-1, length)
    return (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-8)


def arclength_starts(x: np.ndarray, n: int, beta: float) -> np.ndarray:
    """(rows, T) -> (rows, n) starts (fractions of the window) of n spans of equal density mass."""
    dx = np.abs(np.diff(x, axis=1, prepend=x[:, :1]))
    density = (1 - beta) / x.shape[1] + beta * dx / np.maximum(dx.sum(1, keepdims=True), 1e-12)
    cdf = np.cumsum(density, axis=1)
    q = np.arange(n) / n
    return np.stack([np.searchsorted(c, q) for c in cdf]) / x.shape[1]


def slot_t_std(t: np.ndarray) -> float:
    """span_t_std's definition: std over windows of each slot's start, mean over slots."""
    return float(t.std(axis=0).mean())


def main(argv=None) -> Dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-token", type=int, default=32)
    p.add_argument("--out")
    args = p.parse_args(argv)
    x, n = watch_series(), args.num_token
    rng = np.random.default_rng(0)
    free = rng.uniform(0, 1, (len(x), n))
    rows = {f"arclength(beta={b})": slot_t_std(arclength_starts(x, n, b)) for b in (0.0, 0.5, 1.0)}
    rows.update({"random_free": slot_t_std(free), "random_sorted": slot_t_std(np.sort(free, axis=1))})
    for name, v in rows.items():
        print(f"{name:22s} span_t_std {v:.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"num_token": n, "series": len(x), "span_t_std": rows,
                                              "command": f"python -m experiments.receipts.span_bound --num-token {n} "
                                                         f"--out {args.out}"}, indent=1))
    return rows


if __name__ == "__main__":
    main()
