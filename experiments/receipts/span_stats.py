"""Where a VQShape teacher's tokens sit: quantiles of span start t, length l and end min(t + l, 1)
over the first --windows held-out windows (every channel and token), as fractions of the window.

    python -m experiments.receipts.span_stats RUN_DIR [RUN_DIR ...] [--windows 64]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from kd.evaluate import load_run_teacher


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--windows", type=int, default=64)
    args = p.parse_args()
    q = torch.tensor([0.1, 0.5, 0.9])
    print("run                          quantiles 10/50/90 %:   start t          length l          end")
    for run in args.runs:
        teacher, _, _, splits = load_run_teacher(Path(run))
        n = min(args.windows, len(splits.test))
        x = torch.stack([splits.test[i]["x"] for i in range(n)])
        with torch.no_grad():
            out = teacher(x)                      # a text-guided teacher without labels: vocabulary keys
        t, l = out["t"].flatten(), out["l"].flatten()
        cols = [v.quantile(q).numpy() for v in (t, l, (t + l).clamp(max=1))]
        print(f"{Path(run).name:28s} " + "   ".join(" ".join(f"{a:.3f}" for a in c) for c in cols)
              + f"   ({t.numel()} tokens)")


if __name__ == "__main__":
    main()
