"""What the dynamic coefficients did: the `train/coef_<source>` traces of every run of a study's methods.

For each finished (fold, seed) run, the mean of each source's coefficient over the first and the last
third of training and over all of it, then the mean and range of those over the runs. With mGLW dynamic
coefficients (they sum to 1) a source the student finds far from its own latents gets more weight; fixed
coefficients are flat lines at their `fixed_weight`.

    python -m experiments.coef_traces --root runs/cv/coefficients --methods default fixed \\
        --out experiments/results/coef_traces_coefficients.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from experiments.run_reports import finished_runs


def run_traces(run: Path) -> Dict[str, Dict[str, float]]:
    """{source: {first, last, all}} of one run's student-stage coefficient traces."""
    out: Dict[str, Dict[str, float]] = {}
    for events in sorted((run / "tb" / "student").glob("events*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            if tag.startswith("train/coef_"):
                v = np.array([s.value for s in acc.Scalars(tag)])
                third = max(1, len(v) // 3)
                out[tag[len("train/coef_"):]] = {"first": float(v[:third].mean()), "last": float(v[-third:].mean()),
                                                 "all": float(v.mean())}
    return out


def main(argv: Optional[List[str]] = None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="a kd.cv study root")
    ap.add_argument("--methods", nargs="+", required=True)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    out: Dict = {"root": args.root, "methods": {}}
    for m in args.methods:
        runs = {r.name: run_traces(r) for r in finished_runs(Path(args.root) / m)}
        runs = {k: v for k, v in runs.items() if v}
        sources = sorted({s for v in runs.values() for s in v})
        summary = {s: {part: {"mean": float(np.mean([v[s][part] for v in runs.values()])),
                              "min": float(np.min([v[s][part] for v in runs.values()])),
                              "max": float(np.max([v[s][part] for v in runs.values()]))}
                       for part in ("first", "last", "all")} for s in sources}
        out["methods"][m] = {"n": len(runs), "summary": summary, "runs": runs}
        for s in sources:
            a = summary[s]
            print(f"{m:>10} {s:>8}: n {len(runs)}, first third {a['first']['mean']:.3f}, last third "
                  f"{a['last']['mean']:.3f}, all {a['all']['mean']:.3f} [{a['all']['min']:.3f}, {a['all']['max']:.3f}]")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
