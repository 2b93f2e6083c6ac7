"""The synthetic sub-action table: teacher and student recovery against ground truth, per seed and as
mean ± sample sd, from finished `distill.py` runs of `configs/synthetic_subactions.yaml` (stage=all,
stage=student from a saved teacher, or stage=teacher: the rows a run has).

Rows read from each run's results.json (test subjects, no label given unless named):
- teacher: accuracy, the Viterbi path given the class, the label-free scores, the action decoder;
- student: accuracy, its sub-action head distilled by `sub_kl` (label-free), the frozen action decoder
  on its adapter codes (`action_kl`); majority chance beside every token figure.

    python -m experiments.subaction_table runs/syn_sub_s0 runs/syn_sub_s1 runs/syn_sub_s2 \
        --out experiments/results/subactions_student.json

With `student.sub_agreement_val` in the runs (share of validation tokens whose student head and teacher
scores agree; no ground truth), the table also prints its mean: what a sub_kl setting is chosen by.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List

import numpy as np

# (row label, role, results key); each key holds token_acc, step_acc, majority
ROWS = [("teacher: Viterbi given the class", "teacher", "subaction_recovery_viterbi"),
        ("teacher: label-free scores", "teacher", "subaction_recovery_scores"),
        ("teacher: action decoder", "teacher", "subaction_recovery"),
        ("student: sub-action head (sub_kl, label-free)", "student", "subaction_recovery_scores"),
        ("student: frozen action decoder (action_kl)", "student", "subaction_recovery"),
        # the validation subject (what settings are chosen by), in runs since the keys exist
        ("validation: teacher label-free scores", "teacher", "subaction_recovery_scores_val"),
        ("validation: student sub-action head", "student", "subaction_recovery_scores_val")]


def run_figures(run_dir: Path) -> Dict:
    """One run's figures; a teacher-only run (stage=teacher) has no student rows."""
    r = json.loads((run_dir / "results.json").read_text())
    out = {f"{role}_accuracy": r[role]["accuracy"] for role in ("teacher", "student") if role in r}
    if "sub_agreement_val" in r.get("student", {}):   # runs since the key exists: the validation figure
        out["student_sub_agreement_val"] = r["student"]["sub_agreement_val"]
    for label, role, key in ROWS:
        if key in r.get(role, {}):
            rec = r[role][key]
            out[label] = {k: rec[k] for k in ("token_acc", "step_acc", "majority")}
    return out


def mean_sd(values: List[float]) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}"


def table(runs: Dict[str, Dict]) -> str:
    figs = list(runs.values())
    lines = ["| row | token recovery | step recovery | majority (token) |", "|---|---|---|---|"]
    for label, _, _ in ROWS:
        if all(label in f for f in figs):
            cells = [mean_sd([f[label][k] for f in figs]) for k in ("token_acc", "step_acc", "majority")]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    acc = ", ".join(f"{role} {mean_sd([f[f'{role}_accuracy'] for f in figs])}" for role in ("teacher", "student")
                    if all(f"{role}_accuracy" in f for f in figs))
    agree = [f["student_sub_agreement_val"] for f in figs if "student_sub_agreement_val" in f]
    val = f"; student head = teacher scores on validation tokens {mean_sd(agree)}" if len(agree) == len(figs) else ""
    return "\n".join(lines) + f"\n\n{len(figs)} run(s); accuracy: {acc}{val}"


def main(argv: List[str] | None = None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dirs", nargs="+")
    ap.add_argument("--out", help="write every run's figures as JSON")
    args = ap.parse_args(argv)
    runs = {str(d): run_figures(Path(d)) for d in args.run_dirs}
    print(table(runs))
    if args.out:
        Path(args.out).write_text(json.dumps({"runs": runs, "table": table(runs)}, indent=2) + "\n")
    return runs


if __name__ == "__main__":
    main()
