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
  within each class. Near 0 or below: the path changes state at a rate the signal does not set;
- `cycle_pass`: the share of windows whose decoded path (the chain's states over its time bins, given the true
  class) runs through the class's phases in order at least twice with a cycle length within 25 % of the
  window's own repetition period (`cycle_check`; windows without a measurable period fail it);
- with several runs on the same test subjects (seeds), `seed_ari`: the adjusted Rand index of their decoded
  phases over every time bin of every held-out window, averaged over the pairs of runs.

    python -m experiments.alignment_rhythm runs/watch_rs130c2_ps02_s0 [RUN_DIR ...] [--out FILE]
"""
from __future__ import annotations

import json
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


def cycle_check(path: np.ndarray, n_states: int, reps: float, tolerance: float = 0.25) -> bool:
    """path: a window's decoded states over its time bins, in order (a cyclic chain stays or advances by one).
    True when it advances through all n_states phases at least twice and its cycle length (n_states / advances
    of the window) lies within `tolerance` of the window's period (1 / reps of the window)."""
    advances = int(np.count_nonzero(np.diff(path)))
    if not advances >= 2 * n_states or not reps > 0:
        return False
    return abs(n_states / advances - 1 / reps) <= tolerance / reps


def adjusted_rand(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labellings of the same items (Hubert & Arabie 1985): 1 = the same partition,
    about 0 = chance; nan when both put every item in one group."""
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    table = np.zeros((ia.max() + 1, ib.max() + 1))
    np.add.at(table, (ia, ib), 1)
    pairs = lambda v: (v * (v - 1) / 2).sum()  # noqa: E731
    both, rows, cols, total = pairs(table), pairs(table.sum(1)), pairs(table.sum(0)), pairs(np.array([len(a)]))
    expected = rows * cols / total
    top = (rows + cols) / 2
    return float("nan") if top == expected else float((both - expected) / (top - expected))


@torch.no_grad()
def decoded(run_dir: Path):
    """A run's teacher on its held-out windows: per window the chain's decoded states over the time bins given
    the true class (B, N), its class, its number of phases and its repetitions."""
    teacher, _, _, splits = load_run_teacher(run_dir)
    teacher.eval()
    rows = {"path": [], "y": [], "n_states": [], "reps": [], "changes": []}
    for batch in DataLoader(splits.test, batch_size=64):
        out = teacher(batch["x"], keys="vocab", reconstruct=False)
        dec = teacher.decode(out, batch["y"])
        order = out["t"][..., 0].argsort(1)                                     # tokens in time order
        tokens = dec["viterbi"].gather(1, order).reshape(len(batch["y"]), splits.num_channels, -1)[:, 0]
        rows["changes"] += (tokens[:, 1:] != tokens[:, :-1]).sum(1).tolist()   # channel 0's tokens
        rows["path"] += dec["path"].tolist()                                    # one sequence per window
        rows["y"] += batch["y"].tolist()
        rows["n_states"] += teacher.class_mask[batch["y"]].sum(1).tolist()
        rows["reps"] += [repetitions(x.numpy()) for x in batch["x"]]
    return teacher, splits, {k: np.array(v) for k, v in rows.items()}


def seed_ari(run_dirs) -> float:
    """Mean pairwise adjusted Rand index of several runs' decoded phases (the same held-out windows)."""
    paths = [decoded(Path(r))[2]["path"].ravel() for r in run_dirs]
    if len({len(p) for p in paths}) != 1:
        raise ValueError("seed_ari needs runs decoded on the same held-out windows (same test subjects)")
    return float(np.mean([adjusted_rand(a, b) for i, a in enumerate(paths) for b in paths[i + 1:]]))


@torch.no_grad()
def report(run_dir: Path) -> Dict:
    teacher, splits, d = decoded(run_dir)
    passed = [cycle_check(p, k, r) for p, k, r in zip(d["path"], d["n_states"], d["reps"])]
    changes, reps, ys = d["changes"], d["reps"], d["y"]
    ok = ~np.isnan(reps)
    within = [rank_corr(changes[ok & (ys == c)], reps[ok & (ys == c)]) for c in np.unique(ys[ok])]
    rep = {k: v for k, v in alignment_report(teacher, splits.test).items() if k != "collapsed"}
    return {"run": str(run_dir), **rep, "state_changes": float(changes.mean()),
            "repetitions": float(reps[ok].mean()), "rank_corr": rank_corr(changes[ok], reps[ok]),
            "cycle_pass": float(np.mean(passed)), "windows_with_a_period": int(ok.sum()),
            "rank_corr_within_class": float(np.nanmean(within)) if not np.isnan(within).all() else float("nan")}


def main(argv=None):
    rows = main_over_runs(__doc__, report, argv)
    if len(rows) > 1 and len({r["windows"] for r in rows}) == 1:   # seeds of one fold: do they agree?
        print(json.dumps({"seed_ari": seed_ari([r["run"] for r in rows])}))
    return rows


if __name__ == "__main__":
    main()
