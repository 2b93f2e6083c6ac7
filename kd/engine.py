"""The training engine every stage uses (teacher, student, baseline).

Accelerate's fixed order: Accelerator -> seed -> model -> optimizer -> `prepare` -> loop with
`accelerator.backward` -> evaluation with `gather_for_metrics`. A task is an nn.Module whose
`forward(batch, teacher_out)` returns (named already-weighted loss terms, extra scalars to log);
the loop sums the terms and logs every key under the same tags in every run:
`train/loss_<term>`, `train/loss_total`, `train/lr`, `train/<extra>` and `val/<metric>`.

Resume: after every epoch the full state (model, optimizer, scheduler, RNG) is saved to
`<run_dir>/state/<stage>` atomically; randomness inside an epoch is seeded by (seed, epoch)
and the data order by an epoch-seeded sampler, so a resumed run replays the same epochs.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np
import torch
import torch.nn as nn
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from kd.checkpoint import assert_finite_state
from kd.config import ConfigError
from kd.metrics import classification_report
from kd.outputs import Outputs


class NonFiniteLoss(FloatingPointError):
    """A non-finite loss or gradient; the message names the stage, step and every loss term."""


# ----------------------------------------------------------------------------- data loading
class EpochSampler(Sampler[int]):
    """Shuffled order that depends only on (seed, epoch): resumed runs see the same batches."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def check_batch_fits(n: int, batch_size: int) -> None:
    """Every epoch drops its last partial batch: a training split smaller than one batch trains nothing."""
    if n < batch_size:
        raise ConfigError(f"the training split has {n} windows, fewer than data.batch_size={batch_size}; lower "
                          f"data.batch_size (e.g. data.batch_size={max(1, n // 2)}) or give the training split more subjects")


def train_loader(ds: Dataset, batch_size: int, seed: int, num_workers: int = 0) -> DataLoader:
    check_batch_fits(len(ds), batch_size)
    return DataLoader(ds, batch_size=batch_size, sampler=EpochSampler(len(ds), seed), drop_last=True,
                      num_workers=num_workers)


def eval_loader(ds: Dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)


# ----------------------------------------------------------------------------- schedule
def warmup_cosine(optimizer, warmup: int, total: int, min_ratio: float):
    """Linear warmup to the base lr, then cosine decay to min_ratio * lr at `total` steps."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(accel: Accelerator, predict: Callable[[Dict], torch.Tensor], loader: DataLoader,
             class_names: List[str]) -> Dict:
    """Accuracy, macro-F1 and confusion over the whole split, and accuracy and macro-F1 per subject
    (`per_subject`, keyed by subject id; absent when the subjects are unknown). Every window is
    counted once (gather_for_metrics drops the samples Accelerate pads the last batch with)."""
    preds, labels, subjects = [], [], []
    for batch in loader:
        logits = predict(batch)
        p, y, s = accel.gather_for_metrics((logits.argmax(-1), batch["y"], batch["subject"]))
        preds.append(p.cpu())
        labels.append(y.cpu())
        subjects.append(s.cpu())
    cat = lambda xs: torch.cat(xs).numpy() if xs else np.zeros(0, dtype=np.int64)  # noqa: E731
    y_pred, y_true, subj = cat(preds), cat(labels), cat(subjects)
    report = classification_report(y_true, y_pred, class_names)
    if len(subj) and (subj >= 0).all():
        report["per_subject"] = {str(int(k)): {m: v for m, v in classification_report(
            y_true[subj == k], y_pred[subj == k], class_names).items() if m in ("accuracy", "macro_f1", "n")}
            for k in np.unique(subj)}
    return report


# ----------------------------------------------------------------------------- state
def save_state(accel: Accelerator, state_dir: Path, progress: Dict, model: nn.Module) -> None:
    """Accelerate state + progress.json, swapped into place atomically by the main process."""
    state_dir = Path(state_dir)
    assert_finite_state(accel.unwrap_model(model).state_dict(), f"training state {state_dir}")
    tmp, old = state_dir.with_name(state_dir.name + ".tmp"), state_dir.with_name(state_dir.name + ".old")
    if accel.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accel.wait_for_everyone()
    accel.save_state(str(tmp))
    accel.wait_for_everyone()
    if accel.is_main_process:
        (tmp / "progress.json").write_text(json.dumps(progress))
        if state_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
            state_dir.rename(old)
        tmp.rename(state_dir)
        shutil.rmtree(old, ignore_errors=True)
    accel.wait_for_everyone()


def load_progress(state_dir: Path) -> Optional[Dict]:
    f = Path(state_dir) / "progress.json"
    return json.loads(f.read_text()) if f.is_file() else None


# ----------------------------------------------------------------------------- the loop
@dataclass
class StageSpec:
    """What one training stage needs besides the task (whose `predict(batch)` gives logits)."""
    name: str                                   # teacher | student | baseline (TensorBoard sub-directory)
    epochs: int
    lr: float
    teacher: Optional[object] = None             # frozen module (its `teach` outputs go to the task) or TeacherCache
    # "best_val": at the end the task holds the weights of the epoch with the best validation macro-F1
    # (the earliest on a tie); "last": the last epoch's. A stage without a validation split keeps the last.
    select: str = "best_val"
    # scalars written once at step 0 next to the stage's curves (a student's: each teacher's validation
    # macro-F1, so the KD terms and coefficients can be read against how good each source is)
    constants: Dict[str, float] = field(default_factory=dict)
    mixup: float = 0.0                           # Beta(a, a) parameter of train.mixup; 0 = off
    augment: Dict[str, float] = field(default_factory=dict)   # train.augment: scale, jitter, shift (0 = off)
    ema: float = 0.0                             # train.ema: decay of the weight average (0 = off)


class WeightAverage:
    """An exponential moving average of a model's weights (`train.ema` = its decay; Polyak averaging):
    after every optimizer step a <- d_t a + (1 - d_t) w for each floating-point tensor of the state dict
    (BatchNorm statistics included; integer counters are copied), with d_t = min(decay, (1 + t) / (10 + t))
    so the first steps are not averaged with the random initialisation. The raw weights keep training;
    validation, the choice of epoch and the weights a stage ends with are the averaged ones."""

    def __init__(self, model: nn.Module, decay: float):
        self.model, self.decay, self.updates = model, decay, 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        # what changes during training: trainable parameters and buffers (a frozen teacher inside the task
        # keeps its copy as it is). The state dict's tensors share storage with the model's, which the
        # optimizer and load_state_dict update in place, so the pairs are found once.
        frozen = {k for k, p in model.named_parameters() if not p.requires_grad}
        self.pairs = [(k, v) for k, v in model.state_dict().items() if k not in frozen]

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in self.pairs:
            a = self.shadow[k]
            if a.is_floating_point():
                a.mul_(d).add_(v, alpha=1 - d)
            else:
                a.copy_(v)

    @contextmanager
    def averaged(self) -> Iterator[None]:
        """Inside the block the model holds the averaged weights; after it, its own again."""
        raw = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.shadow)
        yield
        self.model.load_state_dict(raw)

    # registered with Accelerate, so an interrupted run resumes with its average
    def state_dict(self) -> Dict:
        return {"updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: Dict) -> None:
        self.updates = state["updates"]
        self.shadow = {k: v.to(self.shadow[k].device) for k, v in state["shadow"].items()}


def augment_batch(batch: Dict, scale: float = 0.0, jitter: float = 0.0, shift: float = 0.0) -> Dict:
    """Label-preserving changes of each window x (B, C, T): a gain ~ N(1, scale) per window and channel,
    Gaussian noise of `jitter` times each window channel's std, and a circular shift by up to
    round(shift * T) steps either way (torch RNG, seeded per epoch by the loop)."""
    x = batch["x"]
    B, C, T = x.shape
    if scale > 0:
        x = x * (1 + scale * torch.randn(B, C, 1, device=x.device))
    if jitter > 0:
        x = x + jitter * x.std(-1, keepdim=True) * torch.randn_like(x)
    m = round(shift * T)
    if m > 0:
        s = torch.randint(-m, m + 1, (B, 1, 1), device=x.device)
        idx = (torch.arange(T, device=x.device).view(1, 1, T) - s) % T          # out[t] = x[t - s]
        x = torch.gather(x, 2, idx.expand(B, C, T))
    out = dict(batch)
    out["x"] = x
    return out


def mix_batch(batch: Dict, a: float) -> Dict:
    """Mixup of one training batch: x <- lam x + (1 - lam) x[perm], lam ~ Beta(a, a) (one per batch, from
    the torch RNG the loop seeds per epoch); the pair's labels and lam go under "mix" for `kd.distiller.own_losses`."""
    lam = float(torch.distributions.Beta(a, a).sample())
    perm = torch.randperm(batch["x"].shape[0], device=batch["x"].device)
    out = dict(batch)
    out["x"] = lam * batch["x"] + (1 - lam) * batch["x"][perm]
    out["mix"] = (batch["y"][perm], lam)
    return out


class TeacherCache:
    """A frozen teacher's `teach` outputs for every window of a data set, computed once (in eval mode,
    batch by batch: no output depends on the other windows of a batch) and looked up by each batch's
    window `index`. Exact as long as a window's outputs are fixed, i.e. the training windows are not
    augmented; every epoch of the student then reuses one teacher pass."""

    def __init__(self, teacher: nn.Module, dataset: Dataset, batch_size: int = 128):
        index, parts = [], {}
        with torch.no_grad():
            for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
                index.append(batch["index"])
                for k, v in teacher.teach(batch["x"], batch["y"]).tensors().items():
                    parts.setdefault(k, []).append(v.cpu())
        index = torch.cat(index)
        if not torch.equal(index.sort().values, torch.arange(len(dataset))):
            raise ValueError("TeacherCache needs items whose 'index' is their position in the data set")
        order = torch.empty_like(index).scatter_(0, index, torch.arange(len(index)))   # window -> row
        self.store = {k: torch.cat(v)[order] for k, v in parts.items()}

    @property
    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.store.values())

    def teach_batch(self, batch: Dict) -> Outputs:
        idx, device = batch["index"].cpu(), batch["x"].device
        return Outputs.from_tensors({k: v[idx].to(device) for k, v in self.store.items()})


def teacher_outputs(teacher, batch: Dict) -> Optional[Outputs]:
    """The frozen teacher's outputs for this batch: None without a teacher, looked up in a
    TeacherCache, or computed live."""
    if teacher is None:
        return None
    if isinstance(teacher, TeacherCache):
        return teacher.teach_batch(batch)
    with torch.no_grad():
        return teacher.teach(batch["x"], batch["y"])


def check_step(accel: Accelerator, loss: torch.Tensor, grad_norm: Optional[torch.Tensor]) -> bool:
    """True when the loss (and gradient norm) are finite on every process."""
    ok = torch.isfinite(loss.detach()).all()
    if grad_norm is not None:
        ok = ok & torch.isfinite(torch.as_tensor(grad_norm))
    flag = ok.float().reshape(1).to(accel.device)
    if accel.num_processes > 1:
        flag = accel.reduce(flag, reduction="sum") / accel.num_processes
    return bool(flag.item() == 1.0)


def fit(accel: Accelerator, cfg, spec: StageSpec, task: nn.Module, train_ds: Dataset, val_ds: Optional[Dataset],
        class_names: List[str], run_dir: Path) -> Dict:
    """Train `task` for one stage; returns a summary (steps, wall time, last validation metrics)."""
    tc = cfg.train
    loader = train_loader(train_ds, cfg.data.batch_size, cfg.seed, cfg.data.num_workers)
    steps_per_epoch = math.ceil(len(loader) / accel.num_processes)
    total = spec.epochs * steps_per_epoch
    if tc.max_steps is not None:
        total = min(total, tc.max_steps)
    params = [p for p in task.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=tc.weight_decay)
    scheduler = warmup_cosine(optimizer, min(tc.warmup_steps, max(1, total // 10)), total, tc.min_lr_ratio)
    # The scheduler stays outside `prepare` (which would step it once per process) and is
    # registered so save_state/load_state still carry it.
    task, optimizer, loader = accel.prepare(task, optimizer, loader)
    accel.register_for_checkpointing(scheduler)
    ema = WeightAverage(accel.unwrap_model(task), spec.ema) if spec.ema > 0 else None
    if ema is not None:
        accel.register_for_checkpointing(ema)
    val_loader = accel.prepare(eval_loader(val_ds, cfg.data.eval_batch_size)) if val_ds is not None and len(val_ds) else None

    state_dir = run_dir / "state" / spec.name
    start_epoch, step = 0, 0
    best = BestEpoch(run_dir / "state" / f"{spec.name}_best.pt", enabled=spec.select == "best_val"
                     and val_loader is not None)
    progress = load_progress(state_dir) if cfg.resume else None
    if progress is not None:
        accel.load_state(str(state_dir))
        start_epoch, step = progress["epoch"] + 1, progress["step"]
        best.restore(progress.get("best"))
        accel.print(f"[{spec.name}] resumed after epoch {progress['epoch']} (step {step})")
    writer = SummaryWriter(str(run_dir / "tb" / spec.name)) if accel.is_main_process else None
    if writer is not None:
        for tag, value in spec.constants.items():
            writer.add_scalar(tag, value, 0)
    t0, skipped, val, meter = time.time(), 0, {}, Meter()
    # A live bar on a terminal; in a log file (not a TTY) one line per epoch instead of carriage returns.
    tty = sys.stderr.isatty()
    bar = tqdm(total=total, initial=step, desc=spec.name, disable=not accel.is_local_main_process or not tty,
               dynamic_ncols=True)
    for epoch in range(start_epoch, spec.epochs):
        if step >= total:
            break
        # On the prepared loader: its __iter__ re-applies its own epoch counter (which restarts at
        # 0 after a resume), so only this keeps a resumed run on the same data order.
        loader.set_epoch(epoch)
        set_seed(cfg.seed * 1000 + epoch, device_specific=True)
        task.train()
        for batch in loader:
            if step >= total:
                break
            if any(v > 0 for v in spec.augment.values()):
                batch = augment_batch(batch, **spec.augment)
            if spec.mixup > 0:
                batch = mix_batch(batch, spec.mixup)
            t_out = teacher_outputs(spec.teacher, batch)
            with accel.autocast():
                terms, extras = task(batch, t_out)
            loss = sum(terms.values())
            accel.backward(loss)
            grad_norm = accel.clip_grad_norm_(params, tc.grad_clip) if tc.grad_clip > 0 else None
            if not check_step(accel, loss, grad_norm):
                described = {k: float(v.detach()) for k, v in terms.items()}
                if tc.nonfinite == "stop":
                    raise NonFiniteLoss(f"[{spec.name}] non-finite loss or gradient at step {step} "
                                        f"(epoch {epoch}); terms: {described}, grad norm: {grad_norm}. "
                                        f"Lower the lr, check the data, or set train.nonfinite=skip")
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                accel.print(f"[{spec.name}] skipped step {step}: non-finite; terms {described}")
                continue
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update()
            step += 1
            bar.update(1)
            meter.add({f"loss_{k}": v for k, v in terms.items()}, extras, loss)
            if writer is not None and (step % tc.log_every == 0 or step == total):
                meter.write(writer, step, scheduler.get_last_lr()[0], skipped)
        with ema.averaged() if ema is not None else nullcontext():
            val = validate(accel, spec, task, val_loader, class_names, writer, step)
            best.offer(accel, task, epoch, val)
        save_state(accel, state_dir, {"epoch": epoch, "step": step, "best": best.record()}, task)
        if not tty:
            accel.print(f"[{spec.name}] epoch {epoch + 1}/{spec.epochs}: step {step}/{total}, "
                        f"{time.time() - t0:.0f} s" + (f", val macro-F1 {val['macro_f1']:.3f}" if val else ""))
    bar.close()
    if writer is not None:
        writer.close()
    summary = {"steps": step, "skipped_steps": skipped, "wall_s": time.time() - t0, "val_last": val}
    if ema is not None:
        accel.unwrap_model(task).load_state_dict(ema.shadow)
    summary.update(best.apply(accel, task, spec.name))
    summary["val"] = summary.get("val_selected", val)
    return summary


class BestEpoch:
    """Keeps the weights of the epoch with the best validation macro-F1 (main process writes them
    next to the training state, so a resumed run still knows its best epoch) and puts them back in
    the task at the end of the stage. Every process holds the same weights after `apply`."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = Path(path), enabled
        self.epoch, self.score, self.val = None, -math.inf, {}

    def record(self) -> Optional[Dict]:
        return {"epoch": self.epoch, "score": self.score, "val": self.val} if self.epoch is not None else None

    def restore(self, record: Optional[Dict]) -> None:
        if self.enabled and record is not None:
            self.epoch, self.score, self.val = record["epoch"], record["score"], record["val"]

    def offer(self, accel: Accelerator, task: nn.Module, epoch: int, val: Dict) -> None:
        if not self.enabled or val["macro_f1"] <= self.score:
            return
        self.epoch, self.score, self.val = epoch, val["macro_f1"], dict(val)
        if accel.is_main_process:
            state = {k: v.detach().cpu().clone() for k, v in accel.unwrap_model(task).state_dict().items()}
            tmp = self.path.with_suffix(".tmp")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            torch.save(state, tmp)
            tmp.replace(self.path)
        accel.wait_for_everyone()

    def apply(self, accel: Accelerator, task: nn.Module, stage: str) -> Dict:
        """Load the best epoch's weights into `task`; the summary keys that say what was selected."""
        if not self.enabled or self.epoch is None:
            return {"selected": "last"}
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        accel.unwrap_model(task).load_state_dict(state)
        accel.print(f"[{stage}] selected epoch {self.epoch + 1} (best validation macro-F1 {self.score:.3f})")
        return {"selected": "best_val", "selected_epoch": self.epoch + 1, "val_selected": self.val}


class Meter:
    """Means of every logged scalar since the last write; a key present on only some steps
    (e.g. the workspace alignment, absent on prior-only steps) is averaged over those steps."""

    def __init__(self):
        self.sums: Dict[str, float] = {}
        self.counts: Dict[str, int] = {}

    def add(self, terms: Dict, extras: Dict, loss) -> None:
        values = {**{k: float(v.detach()) for k, v in terms.items()}, **{k: float(v) for k, v in extras.items()},
                  "loss_total": float(loss.detach())}
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1

    def write(self, writer: SummaryWriter, step: int, lr: float, skipped: int) -> None:
        for k, v in self.sums.items():
            writer.add_scalar(f"train/{k}", v / self.counts[k], step)
        writer.add_scalar("train/lr", lr, step)
        writer.add_scalar("train/skipped_steps", skipped, step)
        self.sums, self.counts = {}, {}


def validate(accel, spec: StageSpec, task, val_loader, class_names, writer, step) -> Dict:
    if val_loader is None:
        return {}
    model = accel.unwrap_model(task)
    model.eval()
    report = evaluate(accel, model.predict, val_loader, class_names)
    if writer is not None:
        writer.add_scalar("val/accuracy", report["accuracy"], step)
        writer.add_scalar("val/macro_f1", report["macro_f1"], step)
    return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}
