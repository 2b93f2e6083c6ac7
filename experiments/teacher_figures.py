"""(Re)write a trained teacher's figures and its sub-action report from its checkpoint.

    python -m experiments.teacher_figures --run-dir runs/default [--out DIR]

Writes shapes.png, token_windows.png, code_actions.png and (ordered or set alignment)
subaction_windows.png into DIR (default: the teacher's own directory), and prints the alignment
report (kd.recovery.alignment_report) and, on synthetic data, the token- and step-level sub-action
recovery of the action decoder, the label-free scores and the Viterbi path (kd.reports.subaction_report:
the run's held-out split, and the validation subjects for the scores).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from kd.evaluate import load_run_teacher
from kd.reports import subaction_report
from teachers.interpret import write_teacher_artifacts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    teacher, meta, cfg, splits = load_run_teacher(Path(args.run_dir))
    out = Path(args.out) if args.out else Path(cfg.teacher.checkpoint or Path(args.run_dir) / "teacher")
    out.mkdir(parents=True, exist_ok=True)

    class Bank:   # the vocabulary texts the figures label sub-actions with
        vocab_texts = meta.get("vocab_texts", [])

    report = {"artefacts": write_teacher_artifacts(teacher, splits, out, Bank if meta.get("vocab_texts") else None),
              **subaction_report(cfg, splits, teacher, meta)}
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
