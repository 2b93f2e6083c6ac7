"""Choose between the methods of a cross-validated study on validation subjects only.

For every finished (fold, seed) run of each method under a study root, the macro-F1 of the checkpoint
the run selected, scored on the run's validation subject(s) (`train.val_selected` in results.json);
the test subjects are not read. Prints mean ± sample sd over runs and the mean paired difference
against the first method given, over the (fold, seed) units both have.

    python -m experiments.val_scores --root runs/cv/default_select_all --methods default alone no_logit fm
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List

import numpy as np

from experiments.run_reports import finished_runs


def val_scores(root: Path, method: str) -> Dict[str, float]:
    """{"fold0_s0": validation macro-F1 of the selected checkpoint, ...} of one method's finished runs."""
    out = {}
    for run in finished_runs(root / method):
        r = json.loads((run / "results.json").read_text())
        model = r["student"] if "student" in r else r["baseline"]
        out[run.name] = model["train"]["val_selected"]["macro_f1"]
    return out


def main(argv: List[str] | None = None) -> Dict[str, Dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--methods", nargs="+", required=True)
    ap.add_argument("--out", help="write the per-run scores and the summary as JSON")
    args = ap.parse_args(argv)
    scores = {m: val_scores(Path(args.root), m) for m in args.methods}
    ref = scores[args.methods[0]]
    summary = {}
    for m, s in scores.items():
        v = np.array(list(s.values()))
        units = sorted(set(s) & set(ref))
        d = np.array([s[u] - ref[u] for u in units])
        summary[m] = {"n": len(v), "mean": float(v.mean()) if len(v) else None,
                      "sd": float(v.std(ddof=1)) if len(v) > 1 else None,
                      f"minus_{args.methods[0]}": float(d.mean()) if len(d) else None}
        print(f"{m:24s} n={len(v):3d}  val macro-F1 {summary[m]['mean']:.3f} ± {summary[m]['sd'] or 0:.3f}  "
              f"paired − {args.methods[0]}: {summary[m][f'minus_{args.methods[0]}']:+.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"root": args.root, "summary": summary, "runs": scores}, indent=1))
    return summary


if __name__ == "__main__":
    main()
