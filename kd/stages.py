"""The training stages of a run: the teacher (trained, or loaded from its checkpoint), the student
distilled from it, and the same student trained alone; each on its own Accelerator, each exporting
what it trained (only the main process writes files)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from omegaconf import OmegaConf

from kd.checkpoint import CheckpointError, load_weights, read_checkpoint, save_model
from kd.config import config_from_dict
from kd.identity import TEACHING_KEYS, config_diffs
from kd.distiller import Distiller, OwnLossTask, TeacherGroup
from kd.engine import StageSpec, TeacherCache, eval_loader, evaluate, fit
from kd.vqshape import VQShape
from students import build_student
from students.vqshape_student import VQShapeStudent
from teachers import build_teacher


def make_accelerator(cfg) -> Accelerator:
    """One Accelerator per stage (each has its own prepared objects and checkpoint registry)."""
    # Prior-only workspace steps and class-text-only terms leave some parameters without
    # gradient on some steps; DDP must be told.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    # Without CUDA, Accelerate forms a gloo process group only when told it runs on CPU;
    # otherwise `accelerate launch --multi_gpu` on a CPU machine starts independent runs.
    return Accelerator(mixed_precision=cfg.train.mixed_precision, kwargs_handlers=[ddp],
                       cpu=not torch.cuda.is_available())


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
    if accel.is_main_process:   # a VQShape teacher's frozen parts also on their own (frozen.safetensors)
        frozen = {f"{name}.{k}": v for name, part in teacher.frozen_parts().items()
                  for k, v in part.state_dict().items()} if isinstance(teacher, VQShape) else None
        save_model(teacher_dir(cfg), teacher, teacher_meta(cfg, splits, bank),
                   extra={"frozen": frozen} if frozen else None)
    accel.wait_for_everyone()
    return teacher, summary


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
    if isinstance(student, VQShapeStudent):        # shares the teacher's frozen codebook and decoders
        student.adopt(teacher)
    probe = probe_outputs(student, group if group is not None else teacher, sample_batch(splits.train))
    return Distiller(cfg.kd, student, teacher, probe)


def student_meta(cfg, splits, student: nn.Module, workspace: Optional[nn.Module], teacher_meta_: Optional[Dict],
                 role: str, timeline: Optional[Dict[str, nn.Module]] = None) -> Dict:
    meta = {"role": role, "arch": cfg.student.arch, "config": OmegaConf.to_container(cfg, resolve=True),
            "class_names": list(splits.class_names), "num_channels": splits.num_channels,
            "length": splits.length, "num_actions": student.num_actions,
            "workspace": workspace.args if workspace is not None else None,        # its constructor arguments
            "teacher": (teacher_meta_ or {}).get("arch")}
    if timeline:   # what kd.predict rebuilds the sub-action read-out from, and the sentences it names
        a, h = timeline["adapter"], timeline["sub_head"]
        meta["timeline"] = {"adapter": {"num_tokens": a.num_tokens, "dim_code": a.dim_code},
                            "sub_head": {"context": h.context, "num_actions": h.linear.out_features},
                            "transcripts": timeline["transcripts"].args, "vocab_texts": teacher_meta_["vocab_texts"]}
    return meta


def timeline_parts(distiller: Distiller, teacher: nn.Module) -> Optional[Dict[str, nn.Module]]:
    """A student distilled from the teacher's sub-action scores (sub_kl) exports what tells a window's sub-actions
    over time: its token adapter, its sub-action head and the classes' transcripts (kd.predict --timeline)."""
    if distiller.sub_head is None:
        return None
    from kd.recovery import Transcripts
    return {"adapter": distiller.adapter, "sub_head": distiller.sub_head, "transcripts": Transcripts.of(teacher)}


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
        parts = timeline_parts(distiller, teacher)
        save_model(run_dir / "student", student_export(distiller.student, distiller.workspace, parts),
                   student_meta(cfg, splits, distiller.student, distiller.workspace, t_meta, "student", parts))
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


def student_export(student: nn.Module, workspace: Optional[nn.Module],
                   timeline: Optional[Dict[str, nn.Module]] = None) -> nn.ModuleDict:
    """What a deployed student is: the network, the workspace read-out when it has one, and the sub-action
    read-out when it learned one (timeline_parts)."""
    export = nn.ModuleDict({"student": student})
    if workspace is not None:
        export["workspace"] = workspace
    export.update(timeline or {})
    return export
