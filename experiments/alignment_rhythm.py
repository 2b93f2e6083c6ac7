"""Does an ordered alignment follow the activity's rhythm, or only its own transition prior?

On periodic activities (watch: 2-10 repetitions of an exercise per window) an alignment that has learned
the order of a class's phases should change sub-action more often in windows with more repetitions. For
each finished run with an ordered-alignment teacher, on its held-out windows:

- the alignment figures of `kd.recovery.alignment_report` (`dominant_state_share`, `one_state_windows`, ...);
- `state_changes`: mean number of times the Viterbi path given the true class changes sub-action along a
  window (channel 0's tokens in time order);
- `repetitions`: mean number of periods of the window's signal (lag of the highest autocorrelation after
  its first zero crossing, averaged over the z-normalised channels; windows where it is not positive there
  are left out);
- `rank_corr`: Spearman rank correlation across windows between the two, over all windows and the mean
  within each class. Near 0 or below: the path changes state at a rate the signal does not set.

    python -m experiments.alignment_rhythm runs/watch_rs130c2_ps02_s0 [RUN_DIR ...] [--out FILE]
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np
import torch
from torch.utils.data import DataLoader

from experiments.run_reports import main_over_runs
from kd.evaluate import load_run_teacher
from kd.recovery import alignment_report


def repetitions(x: np.ndarray) -> float:
    """x (C, T) -> periods per window from the mean autocorrelation of the z-normalised channels
    (nan when, within the first half-window, it never turns negative or never comes back above 0)."""
    z = (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-8)
    T = z.shape[1]
    f = np.fft.rfft(z, 2 * T)
    ac = np.fft.irfft(f * np.conj(f))[:, :T].mean(0)
    neg = np.nonzero(ac[: T // 2] < 0)[0]
    if len(neg) == 0:
        return float("nan")
    lag = neg[0] + int(np.argmax(ac[neg[0]: T // 2]))
    return T / lag if ac[lag] > 0 else float("nan")


def rank_corr(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho (average ranks for ties); nan when either side is constant."""
    ra, rb = (np.argsort(np.argsort(v, kind="stable"), kind="stable").astype(float) for v in (a, b))
    for v, r in ((a, ra), (b, rb)):
        for u in np.unique(v):
            r[v == u] = r[v == u].mean()
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


@torch.no_grad()
def report(run_dir: Path) -> Dict:
    teacher, _, _, splits = load_run_teacher(run_dir)
    teacher.eval()
    changes, reps, ys = [], [], []
    for batch in DataLoader(splits.test, batch_size=64):
        out = teacher(batch["x"], keys="vocab", reconstruct=False)
        dec = teacher.decode(out, batch["y"])
        order = out["t"][..., 0].argsort(1)                                     # tokens in time order
        path = dec["viterbi"].gather(1, order).reshape(len(batch["y"]), splits.num_channels, -1)[:, 0]
        changes += (path[:, 1:] != path[:, :-1]).sum(1).tolist()
        reps += [repetitions(x.numpy()) for x in batch["x"]]
        ys += batch["y"].tolist()
    changes, reps, ys = np.array(changes), np.array(reps), np.array(ys)
    ok = ~np.isnan(reps)
    within = [rank_corr(changes[ok & (ys == c)], reps[ok & (ys == c)]) for c in np.unique(ys[ok])]
    rep = {k: v for k, v in alignment_report(teacher, splits.test).items() if k != "collapsed"}
    return {"run": str(run_dir), **rep, "state_changes": float(changes.mean()),
            "repetitions": float(reps[ok].mean()), "rank_corr": rank_corr(changes[ok], reps[ok]),
            "rank_corr_within_class": float(np.nanmean(within)) if not np.isnan(within).all() else float("nan")}


if __name__ == "__main__":
    main_over_runs(__doc__, report)
