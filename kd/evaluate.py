"""Evaluate a finished run's saved models on its held-out split, on one or several processes.

    accelerate launch -m kd.evaluate --run-dir runs/default [--out eval.json]

Reads `<run_dir>/config.yaml`, the teacher checkpoint and the exported students; prints (and the
main process writes) accuracy, macro-F1 and the number of windows counted for each model.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch.nn as nn
from accelerate import PartialState
from omegaconf import DictConfig, OmegaConf

from kd.config import config_from_dict
from kd.data import Splits, build_splits
from kd.pipeline import end_processes
from kd.stages import load_teacher, make_accelerator, teacher_dir
from kd.reports import test_report
from kd.predict import Predictor


def load_run(run_dir: Path) -> Tuple[DictConfig, Splits]:
    """A finished distill.py run's resolved config and its data splits."""
    cfg = config_from_dict(OmegaConf.to_container(OmegaConf.load(Path(run_dir) / "config.yaml")))
    return cfg, build_splits(cfg.data)


def load_run_teacher(run_dir: Path) -> Tuple[nn.Module, Dict, DictConfig, Splits]:
    """(teacher, its checkpoint metadata, config, splits) of a finished run."""
    cfg, splits = load_run(run_dir)
    teacher, meta = load_teacher(teacher_dir(cfg), splits)
    return teacher, meta, cfg, splits


def evaluate_run(run_dir: Path) -> Dict:
    cfg, splits = load_run(run_dir)
    accel, out = make_accelerator(cfg), {}
    if (teacher_dir(cfg) / "model.safetensors").is_file():
        teacher, _ = load_teacher(teacher_dir(cfg), splits)
        out["teacher"] = test_report(accel, cfg, splits, lambda b: teacher.predict(b["x"]), teacher)
    for role in ("student", "baseline"):
        if (run_dir / role / "model.safetensors").is_file():
            p = Predictor(run_dir / role)
            out[role] = test_report(accel, cfg, splits, lambda b, p=p: p.logits(b["x"]), p)
    return out


def main(argv: Optional[List[str]] = None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--out", default=None, help="also write the metrics to this JSON file (main process)")
    args = ap.parse_args(argv)
    run_dir = Path(args.run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} has no config.yaml; give the run_dir of a distill.py run")
    results = evaluate_run(run_dir)
    state = PartialState()
    summary = {k: {m: v[m] for m in ("accuracy", "macro_f1", "n")} for k, v in results.items()}
    if state.is_main_process:
        print(json.dumps({"num_processes": state.num_processes, **summary}, indent=2))
        if args.out:
            Path(args.out).write_text(json.dumps({"num_processes": state.num_processes, **results}, indent=2))
    end_processes()
    return results


if __name__ == "__main__":
    main()
