"""The whole run `distill.py` performs: train (or load) the teacher, freeze it, distill the
student, train the no-teacher baseline, evaluate all on held-out subjects, write results.json.

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
import torch.nn as nn
from accelerate import Accelerator, DistributedDataParallelKwargs, PartialState
from accelerate.utils import set_seed
from omegaconf import OmegaConf

from kd.checkpoint import CheckpointError, load_weights, read_checkpoint, save_model
from kd.config import TEACHING_KEYS, ConfigError, comparable, config_diffs, config_from_dict, to_yaml
from kd.data import build_splits
from kd.distiller import Distiller, OwnLossTask, TeacherGroup
from kd.engine import StageSpec, TeacherCache, eval_loader, evaluate, fit
from students import build_student
from teachers import build_teacher
from kd.layers import param_count

class RunDirError(RuntimeError):
    """The run directory holds another config's outputs."""


def make_accelerator(cfg) -> Accelerator:
    """One Accelerator per stage (each has its own prepared objects and checkpoint registry)."""
    # Prior-only workspace steps and class-text-only terms leave some parameters without
    # gradient on some steps; DDP must be told.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    # Without CUDA, Accelerate forms a gloo process group only when told it runs on CPU;
    # otherwise `accelerate launch --multi_gpu` on a CPU machine starts independent runs.
    return Accelerator(mixed_precision=cfg.train.mixed_precision, kwargs_handlers=[ddp],
                       cpu=not torch.cuda.is_available())


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


# ----------------------------------------------------------------------------- run directory
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


# ----------------------------------------------------------------------------- text
def text_tensors(cfg, splits) -> Tuple[Optional[Dict], Optional[object]]:
    """The MMVQShape text tensors, built (and cached) only when the teacher uses text."""
    if cfg.teacher.arch != "vqshape" or not cfg.teacher.text_guidance:
        return None, None
    from kd.text import build_text_bank
    bank = build_text_bank(cfg.text, splits.class_names, cfg.data.name)
    tensors = {"vocab_emb": bank.vocab_emb, "class_index": bank.class_index,
               "class_mask": bank.class_mask, "label_emb": bank.label_emb}
    return tensors, bank


# ----------------------------------------------------------------------------- teacher
def teacher_dir(cfg) -> Path:
    return Path(cfg.teacher.checkpoint) if cfg.teacher.checkpoint else Path(cfg.run_dir) / "teacher"


def load_teacher(path: Path, splits, expect: Optional[Dict] = None) -> Tuple[nn.Module, Dict]:
    """Rebuild a teacher from its own saved config and check it fits the data (and, with `expect`,
    the pairing's `teacher` config section, whose TEACHING_KEYS it takes)."""
    state, meta = read_checkpoint(path)
    if meta.get("role") != "teacher":
        raise CheckpointError(f"{path} is a {meta.get('role')!r} checkpoint, not a teacher")
    tcfg = config_from_dict(meta["config"]).teacher
    # The saved config read through today's schema: a key added since the checkpoint was written
    # takes its default, which keeps the behaviour from before the key existed.
    saved = OmegaConf.to_container(tcfg, resolve=True)
    found = config_diffs(saved, expect) if expect is not None else []
    diffs = [f"teacher.{k}: checkpoint {a!r} vs config {b!r}" for k, a, b in found
             if k != "checkpoint" and k not in TEACHING_KEYS]
    if expect is not None and tcfg.arch == "vqshape" and tcfg.text_guidance:   # how it teaches: the pairing's
        for key in TEACHING_KEYS:
            OmegaConf.update(tcfg, key, OmegaConf.select(OmegaConf.create(expect), key))
    if meta["num_channels"] != splits.num_channels:
        diffs.append(f"channels: checkpoint {meta['num_channels']} vs data {splits.num_channels}")
    if meta["class_names"] != list(splits.class_names):
        diffs.append(f"classes: checkpoint {meta['class_names']} vs data {list(splits.class_names)}")
    if meta["length"] != splits.length:
        diffs.append(f"window length: checkpoint {meta['length']} vs data {splits.length}")
    if diffs:
        raise CheckpointError(f"teacher checkpoint {str(path)!r} does not fit this run: " + "; ".join(diffs)
                              + " (point teacher.checkpoint at a matching teacher, or set the pairing's "
                              "teacher.* to the checkpoint's values)")
    # a text-guided teacher's text tensors are its own buffers: its constructor arguments, saved with it
    text = {k: state[k] for k in ("vocab_emb", "class_index", "class_mask", "label_emb")} \
        if tcfg.arch == "vqshape" and tcfg.text_guidance else None
    teacher = build_teacher(tcfg, meta["num_channels"], len(meta["class_names"]), text)
    load_weights(teacher, state, str(path))
    return freeze(teacher), meta


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


def teacher_meta(cfg, splits, bank) -> Dict:
    meta = {"role": "teacher", "arch": cfg.teacher.arch, "config": OmegaConf.to_container(cfg, resolve=True),
            "class_names": list(splits.class_names), "num_channels": splits.num_channels,
            "length": splits.length, "dataset": cfg.data.name}
    if bank is not None:
        meta.update(text_model=bank.model, vocab_texts=list(bank.vocab_texts))
    return meta


def frozen_tensors(teacher: nn.Module) -> Dict[str, torch.Tensor]:
    """The parts frozen after teacher training (shape & action codebooks and decoders)."""
    names = ("codebook", "shape_decoder", "action_codebook", "action_decoder")
    return {f"{n}.{k}": v for n in names if getattr(teacher, n, None) is not None
            for k, v in getattr(teacher, n).state_dict().items()}


def train_teacher(cfg, splits, text, bank, run_dir: Path) -> Tuple[nn.Module, Dict]:
    accel = make_accelerator(cfg)
    set_seed(cfg.seed)
    teacher = build_teacher(cfg.teacher, splits.num_channels, len(splits.class_names), text)
    summary = {}
    if cfg.train.teacher_ssl_epochs > 0:  # its own stage: own schedule, state dir and TensorBoard run
        # no labels in this stage, so nothing for validation to select: its last epoch goes on
        spec = StageSpec("teacher_ssl", cfg.train.teacher_ssl_epochs, cfg.train.teacher_lr, select="last")
        summary["ssl"] = fit(accel, cfg, spec, OwnLossTask(teacher, self_supervised=True), splits.train,
                             splits.val, splits.class_names, run_dir)
        accel = make_accelerator(cfg)
    task = OwnLossTask(teacher)
    spec = StageSpec("teacher", cfg.train.teacher_epochs, cfg.train.teacher_lr, select=cfg.train.select)
    summary.update(fit(accel, cfg, spec, task, splits.train, splits.val, splits.class_names, run_dir))
    teacher = freeze(accel.unwrap_model(task).model)
    if accel.is_main_process:
        save_model(teacher_dir(cfg), teacher, teacher_meta(cfg, splits, bank),
                   extra={"frozen": frozen_tensors(teacher)} if frozen_tensors(teacher) else None)
    accel.wait_for_everyone()
    return teacher, summary


# ----------------------------------------------------------------------------- student
def probe_outputs(student: nn.Module, teacher: Optional[nn.Module], batch: Dict) -> Dict:
    """One tiny forward of each side, to size the KD modules and check the pairing early."""
    was = student.training
    student.eval()
    with torch.no_grad():
        probe = {"student": student(batch["x"])}
        if teacher is not None:
            probe["teacher"] = teacher.teach(batch["x"], batch["y"])
    student.train(was)
    return probe


def sample_batch(ds, n: int = 2) -> Dict:
    items = [ds[i] for i in range(min(n, len(ds)))]
    return {k: torch.stack([it[k] for it in items]) for k in ("x", "y")}


def new_student(cfg, splits, num_actions: int = 0, freeze_shared: bool = False) -> nn.Module:
    return build_student(cfg.student.arch, cfg.student.cnn, cfg.student.vqshape, splits.num_channels,
                         len(splits.class_names), num_actions, freeze_shared=freeze_shared)


def build_distiller(cfg, splits, teacher: nn.Module, group: Optional[nn.Module] = None) -> Distiller:
    """group: the teacher plus extra teachers (TeacherGroup), whose outputs are the knowledge
    sources; the student still adopts the main teacher's frozen codebook and decoders."""
    student = new_student(cfg, splits, teacher.num_actions, freeze_shared=True)
    if hasattr(student, "adopt"):
        student.adopt(teacher)
    probe = probe_outputs(student, group if group is not None else teacher, sample_batch(splits.train))
    return Distiller(cfg.kd, student, teacher, probe)


def student_meta(cfg, splits, student: nn.Module, workspace: Optional[nn.Module], teacher_meta_: Optional[Dict],
                 role: str) -> Dict:
    return {"role": role, "arch": cfg.student.arch, "config": OmegaConf.to_container(cfg, resolve=True),
            "class_names": list(splits.class_names), "num_channels": splits.num_channels,
            "length": splits.length, "num_actions": student.num_actions,
            "workspace": workspace.args if workspace is not None else None,        # its constructor arguments
            "teacher": (teacher_meta_ or {}).get("arch")}


def load_extra_teachers(cfg, splits) -> Dict[str, nn.Module]:
    """kd.extra_teachers: checkpoints of earlier stage=teacher runs (found at config load), each checked
    against this run's data."""
    return {t.name: load_teacher(Path(t.checkpoint), splits)[0] for t in cfg.kd.extra_teachers}


def train_student(cfg, splits, teacher: nn.Module, t_meta, run_dir: Path,
                  extras: Optional[Dict[str, nn.Module]] = None) -> Tuple[Distiller, Dict]:
    """The student distilled from `teacher` (plus `extras` as further knowledge sources)."""
    accel = make_accelerator(cfg)
    set_seed(cfg.seed)
    group = TeacherGroup(teacher, extras) if extras else teacher
    distiller = build_distiller(cfg, splits, teacher, group=group)
    group.to(accel.device)
    source = group
    if cfg.train.cache_teacher:   # one teacher pass over the training windows instead of one per step
        t0 = time.time()
        source = TeacherCache(group, splits.train, cfg.data.eval_batch_size)
        accel.print(f"[student] teacher outputs of {len(splits.train)} training windows cached "
                    f"({source.nbytes / 2**20:.0f} MiB, {time.time() - t0:.0f} s)")
    spec = StageSpec("student", cfg.train.epochs, cfg.train.lr, teacher=source, select=cfg.train.select,
                     mixup=cfg.train.mixup, augment=dict(cfg.train.augment), ema=cfg.train.ema,
                     constants=teacher_val_scores(accel, cfg, splits, {"main": teacher, **(extras or {})}))
    summary = fit(accel, cfg, spec, distiller, splits.train, splits.val, splits.class_names, run_dir)
    distiller = accel.unwrap_model(distiller)
    if accel.is_main_process:
        save_model(run_dir / "student", student_export(distiller.student, distiller.workspace),
                   student_meta(cfg, splits, distiller.student, distiller.workspace, t_meta, "student"))
    accel.wait_for_everyone()
    return distiller, summary


def teacher_val_scores(accel, cfg, splits, teachers: Dict[str, nn.Module]) -> Dict[str, float]:
    """{'teacher/<name>/val_macro_f1': ...} of every teacher on the validation subjects (never the test)."""
    if not len(splits.val):
        return {}
    loader = accel.prepare(eval_loader(splits.val, cfg.data.eval_batch_size))
    return {f"teacher/{name}/val_macro_f1": evaluate(accel, lambda b, t=t: t.predict(b["x"]), loader,
                                                     splits.class_names)["macro_f1"]
            for name, t in teachers.items()}


def train_baseline(cfg, splits, run_dir: Path) -> Tuple[nn.Module, Dict]:
    """The same student trained alone (cross-entropy and its own terms): the plain trainer."""
    accel = make_accelerator(cfg)
    set_seed(cfg.seed)
    task = OwnLossTask(new_student(cfg, splits))
    spec = StageSpec("baseline", cfg.train.epochs, cfg.train.lr, select=cfg.train.select, mixup=cfg.train.mixup,
                     augment=dict(cfg.train.augment), ema=cfg.train.ema)
    summary = fit(accel, cfg, spec, task, splits.train, splits.val, splits.class_names, run_dir)
    student = accel.unwrap_model(task).model
    if accel.is_main_process:
        save_model(run_dir / "baseline", student_export(student, None),
                   student_meta(cfg, splits, student, None, None, "baseline"))
    accel.wait_for_everyone()
    return student, summary


def student_export(student: nn.Module, workspace: Optional[nn.Module]) -> nn.ModuleDict:
    """What a deployed student is: the network, and the workspace read-out when it has one."""
    export = nn.ModuleDict({"student": student})
    if workspace is not None:
        export["workspace"] = workspace
    return export


# ----------------------------------------------------------------------------- evaluation
def test_report(cfg, splits, predict, model: nn.Module, extra: Optional[Dict] = None) -> Dict:
    accel = make_accelerator(cfg)
    model.to(accel.device).eval()
    loader = accel.prepare(eval_loader(splits.test, cfg.data.eval_batch_size))
    report = evaluate(accel, predict, loader, splits.class_names)
    report["params"] = param_count(model)
    report.update(extra or {})
    return report


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
    if len(splits.train) < cfg.data.batch_size:   # seconds in, not after a teacher has trained
        raise ConfigError(f"the training split has {len(splits.train)} windows, fewer than data.batch_size="
                          f"{cfg.data.batch_size}; lower data.batch_size (e.g. data.batch_size="
                          f"{max(1, len(splits.train) // 2)}) or give the training split more subjects")
    results: Dict = {"data": splits.info()}
    teacher, t_meta = None, None
    if cfg.teacher.arch != "none":
        teacher, t_meta, t_results = obtain_teacher(cfg, splits, run_dir, accel)
        results["teacher"] = t_results
    if cfg.stage in ("student", "all"):
        results.update(run_students(cfg, splits, teacher, t_meta, run_dir))
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
        return teacher, meta, evaluate_teacher(cfg, splits, teacher, {"loaded_from": str(path)}, meta)
    if cfg.stage == "student":
        raise CheckpointError(f"stage=student needs a teacher checkpoint at {str(path)!r}; train it first "
                              f"(stage=teacher or stage=all) or set teacher.checkpoint")
    text, bank = text_tensors(cfg, splits)
    t0 = time.time()
    teacher, summary = train_teacher(cfg, splits, text, bank, run_dir)
    meta = teacher_meta(cfg, splits, bank)
    report = evaluate_teacher(cfg, splits, teacher, {"train": summary, "train_wall_s": time.time() - t0}, meta)
    if accel.is_main_process and hasattr(teacher, "codebook"):
        from teachers.interpret import write_teacher_artifacts
        report["interpretability"] = write_teacher_artifacts(teacher, splits, teacher_dir(cfg), bank)
    return teacher, meta, report


def teacher_health(teacher, splits, state: PartialState) -> Dict:
    """Health figures of a VQShape teacher on the held-out windows (teachers/health.py), with a loud
    warning in the log when its tokens have collapsed."""
    from teachers.health import format_health, health_report
    report = health_report(teacher, splits.test)
    state.print(("[teacher] health: " if not report["collapsed"] else "[teacher] WARNING health: ")
                + format_health(report))
    return report


def recovery_scorer(cfg, splits, t_meta: Optional[Dict]):
    """(token_fn, dataset = the test split) -> sub-action recovery, when the data are synthetic and the
    teacher has sub-actions; else None."""
    if cfg.data.name != "synthetic" or not t_meta or "vocab_texts" not in t_meta:
        return None
    from kd.data.synthetic import PRIMITIVES
    from kd.recovery import subaction_recovery, synthetic_vocab_map
    from kd.text import description_file
    vmap = synthetic_vocab_map(t_meta["vocab_texts"], description_file(cfg.text, "synthetic"))
    return lambda token_fn, dataset=splits.test: subaction_recovery(token_fn, dataset, vmap, len(PRIMITIVES))


def subaction_report(cfg, splits, teacher, t_meta: Optional[Dict]) -> Dict:
    """What a teacher knows of sub-actions: on synthetic data, the recovery of its action decoder and (with
    an alignment target) of its label-free scores and its Viterbi path; with an alignment target, the
    alignment report. Held-out test windows, except the scores' `_val` figure (the validation subjects,
    for choosing the alignment's settings without the test subjects)."""
    report, aligned = {}, getattr(teacher, "aligned", False)
    score = recovery_scorer(cfg, splits, t_meta)
    if score is not None:
        from kd.recovery import teacher_tokens, teacher_viterbi_tokens
        report["subaction_recovery"] = score(teacher_tokens(teacher))
        if aligned:
            report["subaction_recovery_scores"] = score(teacher_tokens(teacher, "sub_scores"))
            report["subaction_recovery_viterbi"] = score(teacher_viterbi_tokens(teacher))
            report["subaction_recovery_scores_val"] = score(teacher_tokens(teacher, "sub_scores"), splits.val)
    if aligned:
        from kd.recovery import alignment_report
        report["alignment"] = alignment_report(teacher, splits.test)
    return report


def evaluate_teacher(cfg, splits, teacher, extra: Dict, t_meta: Dict) -> Dict:
    report = test_report(cfg, splits, lambda b: teacher.predict(b["x"]), teacher, extra)
    if hasattr(teacher, "codebook"):
        report["health"] = teacher_health(teacher, splits, PartialState())
    if hasattr(teacher, "members"):   # an ensemble: each member's own held-out score beside the ensemble's
        report["member_macro_f1"] = [test_report(cfg, splits, lambda b, m=m: m.predict(b["x"]), m)["macro_f1"]
                                     for m in teacher.members]
    report.update(subaction_report(cfg, splits, teacher, t_meta))
    if teacher.num_actions:  # text-guided: the class-text number is a diagnostic, named as such
        oracle = test_report(cfg, splits, lambda b: teacher(b["x"], b["y"], keys="class", reconstruct=False)["logits"],
                             teacher)
        report["oracle_class_text_accuracy"] = oracle["accuracy"]
        report["oracle_class_text_macro_f1"] = oracle["macro_f1"]
    return report


def run_students(cfg, splits, teacher, t_meta, run_dir: Path) -> Dict:
    out = {}
    roles = (["student"] if teacher is not None else []) + (["baseline"] if cfg.train.baseline or teacher is None else [])
    extras = load_extra_teachers(cfg, splits) if teacher is not None else {}
    score = recovery_scorer(cfg, splits, t_meta)
    if extras:
        out["extra_teachers"] = {n: test_report(cfg, splits, (lambda b, m=m: m.predict(b["x"])), m)
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
        out[role] = test_report(cfg, splits, predict, student_export(student, workspace),
                                {"arch": cfg.student.arch, "train": summary, "train_wall_s": time.time() - t0,
                                 "params_inference": inference})
        if score is not None and role == "student" and distiller.has_action_tokens():
            from kd.recovery import student_tokens
            out[role]["subaction_recovery"] = score(student_tokens(distiller.eval()))
            if distiller.sub_head is not None:   # the head distilled from the teacher's sub-action scores
                out[role]["subaction_recovery_scores"] = score(student_tokens(distiller, "sub_logits"))
                out[role]["subaction_recovery_scores_val"] = score(student_tokens(distiller, "sub_logits"), splits.val)
        if role == "student" and distiller.sub_head is not None and len(splits.val):
            # label-free fidelity on the validation subjects: what a sub_kl setting may be chosen by
            from kd.recovery import argmax_agreement
            distiller.eval()
            out[role]["sub_agreement_val"] = argmax_agreement(
                lambda x: distiller.student_forward(x, None)[0].sub_logits,
                lambda x, y: teacher.teach(x, y).sub_logits, splits.val)
    return out
