"""The HAPT gate's text-guided teacher against the same teacher without text, on the same 5 folds (RESULTS §H3).

Each fold's teacher of the gate screen (configs/studies/hapt_gate.yaml, seed 0) is retrained from its own saved
config with one change, `teacher.text_guidance=false` (the VQShape teacher and its head, no sub-action text, no
cross-attention), into <out-root>/fold<k>; then both teachers' test macro-F1 and per-class F1 are compared, paired
over the folds, by the corrected resampled t-test (kd.stats.corrected_t, the overlap of the 5-fold scheme).

Rule, written before any run (issues 35 and 36: "text-guided teacher >= the same teacher without text"): the
target is met if the text-guided teacher's mean test macro-F1 over the 5 folds is at least the no-text teacher's;
the paired difference and its CI are reported whatever the verdict. Nothing is tuned.

    python -m experiments.receipts.hapt_text_ablation runs/cv/hapt_gate/teachers/vqshape_d8c2df68 \
        --out-root runs/hapt_text_ablation [--report-only] [--out experiments/results/hapt_text_ablation.json]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from kd.cv import test_train_ratio
from kd.metrics import per_class_f1
from kd.stats import corrected_t, summary


def train(text_dir: Path, out_dir: Path) -> None:
    if (out_dir / "results.json").exists():
        print(f"[skip] {out_dir} (finished)", flush=True)
        return
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "distill.py", "--config", str(text_dir / "config.yaml"), "teacher.text_guidance=false",
           f"run_dir={out_dir}", "resume=true"]
    print("[run]", " ".join(cmd), flush=True)
    with open(f"{out_dir}.log", "a") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)


def report(text_root: Path, out_root: Path, folds: list) -> dict:
    import yaml
    rows, split = [], []
    for f in folds:
        with_text = json.loads((text_root / f"fold{f}" / "results.json").read_text())["teacher"]
        no_text = json.loads((out_root / f"fold{f}" / "results.json").read_text())["teacher"]
        data = yaml.safe_load((text_root / f"fold{f}" / "config.yaml").read_text())["data"]
        split.append({"test": data["test_subjects"], "val": data["val_subjects"]})
        rows.append({"fold": f, "text": with_text["macro_f1"], "no_text": no_text["macro_f1"],
                     "text_wall_s": with_text["train_wall_s"], "no_text_wall_s": no_text["train_wall_s"],
                     "class_f1": {"text": per_class(with_text), "no_text": per_class(no_text)}})
    d = np.array([r["text"] - r["no_text"] for r in rows])
    t = corrected_t(float(d.mean()), summary(d)["sd"], len(d), test_train_ratio(split))
    return {"folds": rows, "text_mean": float(np.mean([r["text"] for r in rows])),
            "no_text_mean": float(np.mean([r["no_text"] for r in rows])), "diff_mean": float(d.mean()),
            "diff_ci95": [t["low"], t["high"]], "p": t["p"], "wins": int((d > 0).sum()),
            "target_met": bool(d.mean() >= 0)}


def per_class(teacher: dict) -> dict:
    return per_class_f1(np.array(teacher["confusion"]), teacher["class_names"])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("text_root", help="the gate's teacher directory (fold0 ... fold4 under it)")
    ap.add_argument("--out-root", default="runs/hapt_text_ablation")
    ap.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--out", help="write the report as JSON")
    args = ap.parse_args(argv)
    text_root, out_root = Path(args.text_root), Path(args.out_root)
    if not args.report_only:
        for f in args.folds:
            train(text_root / f"fold{f}", out_root / f"fold{f}")
    rep = report(text_root, out_root, args.folds)
    for r in rep["folds"]:
        print(f"fold {r['fold']}: text {r['text']:.3f}  no text {r['no_text']:.3f}  "
              f"({r['text_wall_s']:.0f} s, {r['no_text_wall_s']:.0f} s)")
    print(f"mean: text {rep['text_mean']:.3f}  no text {rep['no_text_mean']:.3f}  difference {rep['diff_mean']:+.3f} "
          f"[{rep['diff_ci95'][0]:+.3f}, {rep['diff_ci95'][1]:+.3f}], corrected p {rep['p']:.2f}, "
          f"text ahead on {rep['wins']} of {len(rep['folds'])} folds; target met: {rep['target_met']}")
    if args.out:
        Path(args.out).write_text(json.dumps(rep, indent=1))
    return rep


if __name__ == "__main__":
    main()
