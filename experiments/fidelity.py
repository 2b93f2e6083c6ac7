"""Does a distilled student agree with its teacher more than the same student trained alone?

For every finished (fold, seed) run of the named methods of a cross-validated study, the share of the
fold's held-out windows on which the student's predicted class equals the fold teacher's (top-1
agreement), and the mean KL(teacher || student) of their class distributions (T = 1). A student that
learned the teacher's function agrees with it beyond what two models of the same accuracy share.

    python -m experiments.fidelity --root runs/cv/ensemble_mixup \\
        --teachers runs/cv/ensemble/teachers/wrn16_1_1e106c34 --methods alone ensemble alone_mixup ensemble_mixup
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from kd.config import config_from_dict
from kd.data import build_splits
from kd.stages import load_teacher
from kd.predict import Predictor
from experiments.run_reports import finished_runs


def test_windows(splits):
    items = [splits.test[i] for i in range(len(splits.test))]
    return torch.stack([torch.as_tensor(it["x"]) for it in items]).float(), \
        torch.as_tensor([int(it["y"]) for it in items])


def unit(run: Path, teacher_dir: Path) -> Dict[str, float]:
    cfg = config_from_dict(OmegaConf.to_container(OmegaConf.load(run / "config.yaml"), resolve=True))
    splits = build_splits(cfg.data)
    x, y = test_windows(splits)
    teacher, _ = load_teacher(teacher_dir, splits)
    model = next(run / r for r in ("student", "baseline") if (run / r / "model.safetensors").is_file())
    with torch.no_grad():
        t_logits = teacher.predict(x)
        s_logits = Predictor(model, fused=False).logits(x)
    log_t, log_s = F.log_softmax(t_logits, -1), F.log_softmax(s_logits, -1)
    return {"agreement": float((t_logits.argmax(-1) == s_logits.argmax(-1)).float().mean()),
            "kl": float(F.kl_div(log_s, log_t, reduction="batchmean", log_target=True)),
            "student_acc": float((s_logits.argmax(-1) == y).float().mean()),
            "teacher_acc": float((t_logits.argmax(-1) == y).float().mean())}


def main(argv: Optional[List[str]] = None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="a kd.cv study root")
    ap.add_argument("--teachers", required=True, help="<teachers_root>/<arch>_<key>: holds fold<k>/teacher")
    ap.add_argument("--methods", nargs="+", required=True)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    root, teachers = Path(args.root), Path(args.teachers)
    out: Dict = {"root": str(root), "teachers": str(teachers), "methods": {}}
    for m in args.methods:
        units = {}
        for run in finished_runs(root / m):
            units[run.name] = unit(run, teachers / run.name.split("_")[0] / "teacher")
        summary = {k: float(np.mean([u[k] for u in units.values()])) for k in next(iter(units.values()))}
        out["methods"][m] = {"units": units, "mean": summary, "n": len(units)}
        print(f"{m:>16}: n {len(units)}, agreement with the teacher {summary['agreement']:.3f}, "
              f"KL(teacher||student) {summary['kl']:.3f}, student acc {summary['student_acc']:.3f}, "
              f"teacher acc {summary['teacher_acc']:.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
