"""Held-out accuracy under additive Gaussian noise at several SNRs.

Noise is added per window and channel with power = signal power / 10^(SNR/10) (signal power =
variance of that channel of that window), with a fixed seed, to the resampled test windows; the
models are the saved teacher and exported students of `distill.py` run directories.

    python -m experiments.robustness --teacher RUN --baseline RUN --student RUN [--snr inf,20,10,5,0] [--seeds 0,1,2]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import torch

from kd.metrics import classification_report
from kd.evaluate import load_run, load_run_teacher
from kd.predict import Predictor


def add_noise(x: torch.Tensor, snr_db: float, seed: int) -> torch.Tensor:
    if math.isinf(snr_db):
        return x
    g = torch.Generator().manual_seed(seed)
    power = x.var(dim=-1, keepdim=True)                                     # (N, C, 1)
    return x + torch.randn(x.shape, generator=g) * (power / 10 ** (snr_db / 10)).sqrt()


def model_fn(kind: str, run_dir: Path):
    if kind == "teacher":
        teacher, _, _, splits = load_run_teacher(run_dir)
        return teacher.predict, splits
    return Predictor(run_dir / kind).logits, load_run(run_dir)[1]           # <run_dir>/baseline or /student


@torch.no_grad()
def accuracy(fn, splits, x, snr, seed) -> float:
    logits = torch.cat([fn(b) for b in add_noise(x, snr, seed).split(128)])
    y = torch.stack([splits.test[i]["y"] for i in range(len(splits.test))]).numpy()
    return classification_report(y, logits.argmax(-1).numpy(), splits.class_names)["accuracy"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", nargs="*", default=[], help="run dirs holding a teacher (one per seed)")
    p.add_argument("--baseline", nargs="*", default=[], help="run dirs of the no-teacher student")
    p.add_argument("--student", nargs="*", default=[], help="run dirs of a distilled student")
    p.add_argument("--snr", default="inf,20,10,5,0")
    p.add_argument("--noise-seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    snrs = [float(s) for s in args.snr.split(",")]
    table = {}
    for kind in ("teacher", "baseline", "student"):
        per_seed = []
        for run in getattr(args, kind):
            fn, splits = model_fn(kind, Path(run))
            x = torch.stack([splits.test[i]["x"] for i in range(len(splits.test))])
            per_seed.append([accuracy(fn, splits, x, s, args.noise_seed) for s in snrs])
        if per_seed:
            table[kind] = {str(s): [r[i] for r in per_seed] for i, s in enumerate(snrs)}
    print("accuracy (mean ± std over runs) by SNR in dB:")
    print("  " + " " * 10 + "".join(f"{s:>16}" for s in args.snr.split(",")))
    for kind, cols in table.items():
        cells = [f"{statistics.mean(v):.3f} ± {statistics.pstdev(v):.3f}" for v in cols.values()]
        print(f"  {kind:10s}" + "".join(f"{c:>16}" for c in cells))
    if args.out:
        Path(args.out).write_text(json.dumps({"snr_db": args.snr.split(","), "accuracy": table}, indent=2))


if __name__ == "__main__":
    main()
