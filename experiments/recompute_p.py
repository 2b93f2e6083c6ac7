"""Tool: add the corrected resampled t-test (kd/stats.py corrected_t) to committed study files, and list the
claims whose verdict it changes.

    python -m experiments.recompute_p experiments/results/cv_*.json [--write] [--out FILE]

Every comparison and contrast of a `python -m kd.cv` report stores its units' mean difference, sd and count,
and the report stores its folds, which is all the test needs: no run is read. With --write, each comparison
gains `p`, `diff_ci95_corrected` and `test_train_ratio` (the keys today's reports have); the sign-flip p and
bootstrap CI stay as they were. Prints one row per comparison whose sign-flip p or bootstrap CI called it
(p < 0.05 or a CI without 0), or whose corrected test does.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

from kd.cv import test_train_ratio
from kd.stats import corrected_t


def comparisons(rep: Dict) -> Iterator[Tuple[str, str, Dict]]:
    """(name, metric, comparison) over the report's comparisons against its reference and its contrasts."""
    for group in ("comparisons", "contrasts"):
        for name, by_metric in (rep.get(group) or {}).items():
            for metric, c in (by_metric or {}).items():
                if c:
                    yield (name if group == "comparisons" else f"({name})"), metric, c


def corrected(c: Dict, ratio: float) -> Dict:
    t = corrected_t(c["diff_mean"], c["diff_sd"], c["n_units"], ratio)
    return {"p": t["p"], "diff_ci95_corrected": [t["low"], t["high"]], "test_train_ratio": ratio}


def called(p: float, ci: List[float]) -> bool:
    return p < 0.05 or ci[0] > 0 or ci[1] < 0


def recompute(path: Path, write: bool) -> List[Dict]:
    rep = json.loads(path.read_text())
    ratio = test_train_ratio(rep["folds"])
    rows = []
    for name, metric, c in comparisons(rep):
        new = corrected(c, ratio)
        old_call = called(c["p_sign_flip"], c["diff_ci95"])
        new_call = new["p"] < 0.05
        if old_call or new_call:
            rows.append({"file": path.name, "comparison": name, "metric": metric, "units": c["n_units"],
                         "diff": c["diff_mean"], "p_sign_flip": c["p_sign_flip"], "ci95_bootstrap": c["diff_ci95"],
                         **new, "verdict_changes": old_call != new_call})
        c.update(new)
    if write:
        if rep.get("headline") in (rep.get("comparisons") or {}):
            head = rep["comparisons"][rep["headline"]]["macro_f1"]
            rep.update({"p": head["p"], "diff_ci95_corrected": head["diff_ci95_corrected"]})
        path.write_text(json.dumps(rep, indent=2) + "\n")
    return rows


def table(rows: List[Dict]) -> str:
    lines = ["| file | comparison | metric | units | Δ | sign-flip p | bootstrap CI | corrected p | corrected CI | changes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b, c = r["ci95_bootstrap"], r["diff_ci95_corrected"]
        lines.append(f"| {r['file']} | {r['comparison']} | {r['metric']} | {r['units']} | {r['diff']:+.3f} | "
                     f"{r['p_sign_flip']:.3f} | [{b[0]:+.3f}, {b[1]:+.3f}] | {r['p']:.3f} | "
                     f"[{c[0]:+.3f}, {c[1]:+.3f}] | {'yes' if r['verdict_changes'] else 'no'} |")
    return "\n".join(lines)


def main(argv=None) -> List[Dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--write", action="store_true", help="add the corrected test's keys to each file")
    ap.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    args = ap.parse_args(argv)
    rows = [r for f in sorted(args.files) for r in recompute(f, args.write)]
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
