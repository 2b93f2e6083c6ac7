"""Would an ensemble of the fold teachers already trained be a teacher worth distilling?

For each cross-validation fold, loads the fold teacher of every named teacher directory (a `kd.cv`
`<teachers_root>/<arch>_<key>`, holding `fold<k>/` run directories), asks each about the fold's validation
and test windows, and scores the teachers one by one and the average of their class probabilities. The
student-alone runs of a study (`--alone`, `fold<k>_s<seed>/results.json`) give the bar a teacher has to
clear on the same folds. No training: a screen of whether combining teachers is worth training students for.

    python -m experiments.receipts.teacher_ensemble --teachers runs/cv/conv_head/teachers/vqshape_d092c5b6 \\
        runs/cv/teacher_budget/teachers/vqshape_dc9e7b88 runs/cv/teacher_budget/teachers/vqshape_8a242248 \\
        --alone runs/cv/conv_head/alone --out experiments/results/teacher_ensemble.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from kd.evaluate import load_run_teacher
from kd.metrics import confusion_matrix, macro_f1
from experiments.run_reports import finished_runs


def split_probs(teacher, split) -> tuple:
    x = torch.stack([torch.as_tensor(split[i]["x"]) for i in range(len(split))]).float()
    y = np.array([int(split[i]["y"]) for i in range(len(split))])
    with torch.no_grad():
        return torch.softmax(teacher.predict(x), -1).numpy(), y


def score(probs: np.ndarray, y: np.ndarray) -> float:
    return macro_f1(confusion_matrix(y, probs.argmax(-1), probs.shape[1]))


def fold_scores(fold_dirs: List[Path]) -> Dict:
    """Validation and test macro-F1 of each teacher of one fold and of their averaged probabilities."""
    members: Dict[str, Dict[str, float]] = {}
    probs: Dict[str, List[np.ndarray]] = {"val": [], "test": []}
    labels: Dict[str, np.ndarray] = {}
    for d in fold_dirs:
        teacher, _, _, splits = load_run_teacher(d)
        for part in probs:
            p, labels[part] = split_probs(teacher, getattr(splits, part))
            probs[part].append(p)
            members.setdefault(str(d), {})[part] = score(p, labels[part])
    out: Dict = {"members": members}
    for part in probs:
        out[part] = {"ensemble": score(np.mean(probs[part], 0), labels[part]),
                     "member_mean": float(np.mean([m[part] for m in members.values()]))}
    return out


def alone_by_fold(root: Path) -> Dict[str, float]:
    by: Dict[str, List[float]] = {}
    for r in finished_runs(root):
        by.setdefault(r.name.split("_")[0], []).append(json.loads((r / "results.json").read_text())["baseline"]["macro_f1"])
    return {f: float(np.mean(v)) for f, v in by.items()}


def main(argv: Optional[List[str]] = None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teachers", nargs="+", required=True, help="kd.cv teacher directories holding fold<k>/")
    ap.add_argument("--alone", default=None, help="a kd.cv method directory of the student alone")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    roots = [Path(t) for t in args.teachers]
    folds = sorted(p.name for p in roots[0].glob("fold*") if p.is_dir())
    alone = alone_by_fold(Path(args.alone)) if args.alone else {}
    out: Dict = {"teachers": [str(r) for r in roots], "folds": {}}
    for f in folds:
        out["folds"][f] = fold_scores([r / f for r in roots])
        s = out["folds"][f]
        print(f"{f}: members test " + ", ".join(f"{m['test']:.3f}" for m in s["members"].values())
              + f" | ensemble val {s['val']['ensemble']:.3f} test {s['test']['ensemble']:.3f}"
              + (f" | student alone {alone[f]:.3f}" if f in alone else ""))
    mean = {f"{p}_{k}": float(np.mean([s[p][k] for s in out["folds"].values()]))
            for p in ("val", "test") for k in ("ensemble", "member_mean")}
    if alone:
        mean["alone_test"] = float(np.mean(list(alone.values())))
    out["mean"], out["alone_by_fold"] = mean, alone
    print("mean: " + ", ".join(f"{k} {v:.3f}" for k, v in mean.items()))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
