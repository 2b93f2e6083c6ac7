"""The whole run `distill.py` performs: train (or load) the teacher, freeze it, distill the
student, train the no-teacher baseline, evaluate all on held-out subjects, write results.json.
The stages are kd/stages.py, the reports kd/reports.py.

Only the main process writes files; every process builds the same data and models.
"""
from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed
from omegaconf import OmegaConf

from kd.checkpoint import CheckpointError
from kd.config import config_from_dict, to_yaml
from kd.identity import comparable, config_diffs
from kd.data import build_splits
from kd.engine import check_batch_fits
from kd.layers import param_count
from kd.reports import evaluate_teacher, recovery_scorer, student_subaction_report, test_report
from kd.stages import (load_extra_teachers, load_teacher, make_accelerator, student_export, teacher_dir,
                       teacher_meta, train_baseline, train_student, train_teacher)
from kd.vqshape import VQShape


class RunDirError(RuntimeError):
    """The run directory holds another config's outputs."""


def end_processes() -> None:
    """Leave the process group once every process is done. Without this, gloo's threads can abort
    a process at interpreter exit ("terminate called without an active exception", SIGABRT) after
    its work is finished, and the launcher reports the whole run as failed."""
    state = PartialState()
    if state.num_processes > 1:
        state.wait_for_everyone()
        state.destroy_process_group()


def set_cpu_threads(requested: Optional[int], accel: Accelerator) -> Optional[int]:
    """torch's intra-op threads on CPU: `requested`, or the CPUs this process may use divided by the
    processes on this machine. Returns the number set (None on GPU, where it is left alone)."""
    if accel.device.type != "cpu":
        return None
    if requested is not None and requested < 1:
        raise ValueError(f"train.num_threads={requested} must be >= 1 (or unset for automatic)")
    local = int(os.environ.get("LOCAL_WORLD_SIZE", accel.num_processes))
    n = requested or max(1, len(os.sched_getaffinity(0)) // max(local, 1))
    torch.set_num_threads(n)
    return n


def prepare_run_dir(cfg, accel: Accelerator) -> Path:
    """Refuse to mix two configs' outputs in one run_dir (unless overwrite=true)."""
    run_dir = Path(cfg.run_dir)
    saved = run_dir / "config.yaml"
    if saved.is_file() and not cfg.overwrite:
        # through today's schema: a key added since that run takes its default (its old behaviour)
        diff = [k for k, _, _ in config_diffs(comparable(config_from_dict(OmegaConf.to_container(
            OmegaConf.load(saved)))), comparable(cfg))]
        if diff:
            raise RunDirError(f"run_dir {str(run_dir)!r} holds outputs of another config (differs at "
                              f"{diff[:8]}); choose another run_dir or pass overwrite=true")
    if accel.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        saved.write_text(to_yaml(cfg))
    accel.wait_for_everyone()
    return run_dir


def text_tensors(cfg, splits) -> Tuple[Optional[Dict], Optional[object]]:
    """The MMVQShape text tensors, built (and cached) only when the teacher uses text."""
    if cfg.teacher.arch != "vqshape" or not cfg.teacher.text_guidance:
        return None, None
    from kd.text import build_text_bank
    bank = build_text_bank(cfg.text, splits.class_names, cfg.data.name, splits.details.get("dataset_classes", ()))
    tensors = {"vocab_emb": bank.vocab_emb, "class_index": bank.class_index,
               "class_mask": bank.class_mask, "label_emb": bank.label_emb}
    return tensors, bank


def write_results(run_dir: Path, results: Dict, accel_main: bool) -> None:
    if not accel_main:
        return
    path = run_dir / "results.json"
    merged = json.loads(path.read_text()) if path.is_file() else {}
    merged.update(results)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(merged, indent=2))
    tmp.replace(path)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def check_teacher_checkpoint(cfg) -> None:
    """A teacher.checkpoint that does not exist is trained only when asked (stage=teacher): a mistyped
    path must not silently start a new teacher in the wrong place."""
    if cfg.teacher.arch == "none" or not cfg.teacher.checkpoint or cfg.stage == "teacher":
        return
    path = Path(cfg.teacher.checkpoint)
    if not (path / "model.safetensors").is_file():
        raise CheckpointError(f"teacher.checkpoint={str(path)!r} holds no teacher (no model.safetensors there); "
                              f"fix the path, train it there first with stage=teacher, or unset "
                              f"teacher.checkpoint to train the teacher inside run_dir")


def run(cfg) -> Dict:
    t0 = time.time()
    check_teacher_checkpoint(cfg)
    accel = make_accelerator(cfg)
    threads = set_cpu_threads(cfg.train.num_threads, accel)
    run_dir = prepare_run_dir(cfg, accel)
    set_seed(cfg.seed)
    splits = build_splits(cfg.data)
    check_batch_fits(len(splits.train), cfg.data.batch_size)   # seconds in, not after a teacher has trained
    results: Dict = {"data": splits.info()}
    teacher, t_meta = None, None
    if cfg.teacher.arch != "none":
        teacher, t_meta, t_results = obtain_teacher(cfg, splits, run_dir, accel)
        results["teacher"] = t_results
    if cfg.stage in ("student", "all"):
        results.update(run_students(accel, cfg, splits, teacher, t_meta, run_dir))
    results["wall_s"] = time.time() - t0
    results["peak_rss_mb"] = peak_rss_mb()
    results["num_processes"] = accel.num_processes
    results["cpu_threads_per_process"] = threads
    write_results(run_dir, results, accel.is_main_process)
    return results


def obtain_teacher(cfg, splits, run_dir: Path, accel: Accelerator):
    path = teacher_dir(cfg)
    if (path / "model.safetensors").is_file():
        accel.print(f"[teacher] loading {path}")
        teacher, meta = load_teacher(path, splits, expect=OmegaConf.to_container(cfg.teacher, resolve=True))
        return teacher, meta, evaluate_teacher(accel, cfg, splits, teacher, {"loaded_from": str(path)}, meta)
    if cfg.stage == "student":
        raise CheckpointError(f"stage=student needs a teacher checkpoint at {str(path)!r}; train it first "
                              f"(stage=teacher or stage=all) or set teacher.checkpoint")
    text, bank = text_tensors(cfg, splits)
    t0 = time.time()
    teacher, summary = train_teacher(cfg, splits, text, bank, run_dir)
    meta = teacher_meta(cfg, splits, bank)
    report = evaluate_teacher(accel, cfg, splits, teacher, {"train": summary, "train_wall_s": time.time() - t0}, meta)
    if accel.is_main_process and isinstance(teacher, VQShape):
        from teachers.interpret import write_teacher_artifacts
        report["interpretability"] = write_teacher_artifacts(teacher, splits, teacher_dir(cfg), bank)
    return teacher, meta, report


def run_students(accel: Accelerator, cfg, splits, teacher, t_meta, run_dir: Path) -> Dict:
    out = {}
    roles = (["student"] if teacher is not None else []) + (["baseline"] if cfg.train.baseline or teacher is None else [])
    extras = load_extra_teachers(cfg, splits) if teacher is not None else {}
    score = recovery_scorer(cfg, splits, t_meta)
    if extras:
        out["extra_teachers"] = {n: test_report(accel, cfg, splits, (lambda b, m=m: m.predict(b["x"])), m)
                                 for n, m in extras.items()}
    for role in roles:
        t0 = time.time()
        if role == "student":
            distiller, summary = train_student(cfg, splits, teacher, t_meta, run_dir, extras)
            student, workspace, predict = distiller.student, distiller.workspace, distiller.predict
        else:
            student, summary = train_baseline(cfg, splits, run_dir)
            workspace, predict = None, (lambda b, m=student: m.predict(b["x"]))
        inference = param_count(student) + (workspace.readout_param_count() if workspace is not None else 0)
        out[role] = test_report(accel, cfg, splits, predict, student_export(student, workspace),
                                {"arch": cfg.student.arch, "train": summary, "train_wall_s": time.time() - t0,
                                 "params_inference": inference})
        if role == "student":
            out[role].update(student_subaction_report(splits, distiller, teacher, score))
    return out
