"""Teacher health: do a VQShape teacher's tokens describe the signal?

A VQShape teacher is only worth distilling if its tokens carry information about the window
they came from. A collapsed teacher (every used code decoding to one shape, spans sitting at
the same place whatever the input, a reconstruction no better than each series' mean) still
trains and still classifies, so it has to be measured. On held-out windows, every channel a
series (B*C series of N tokens):

- `distinct_shapes`: decoded shapes of the used codes, z-normalised, clustered greedily (most
  used first) at Pearson r > 0.9: the number of clusters. `codes_used`, `perplexity`.
- `span_coverage`: fraction of a series' time steps inside at least one token span
  [t, min(t + l, 1)], mean over series.
- `span_t_std`, `span_l_std`: std over series of t (l) of each token slot, mean over slots;
  about 0 means the spans ignore the input.
- `shape_fit_r2`: per token, R^2 of the scaled decoded shape s_hat against the input
  subsequence at [t, t + l] resampled to len_s; median over tokens.
- `recon_r2`: R^2 of the reconstruction x_hat against x, 1 - sum SS_res / sum SS_tot with each
  series' SS_tot taken around its own mean (so predicting the series mean scores 0).
- `token_spread`: how much the tokenizer's output h (what the span heads read) changes between
  series: per slot and feature the std over series, averaged, over the root mean square of h.
  About 0: the tokenizer emits the same tokens for every input (the spans then cannot follow it).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List

import torch
from torch.utils.data import DataLoader

from kd.vqshape import extract_subsequence, znorm_rows

# Below these a teacher is reported as collapsed (loudly: log and run summary): few distinct shapes, shapes
# that do not fit their subsequences, a reconstruction near the mean. Span mobility (span_t_std) and
# coverage are reported, not gated: spans that tile a periodic window by design barely move and are no
# collapse (experiments/teacher_health.md section 7). figure: (limit, what a value under it means)
COLLAPSE_LIMITS = {"distinct_shapes": (4, "the used codes decode to a few shapes"),
                   "shape_fit_r2": (0.3, "the decoded shapes do not fit their subsequences"),
                   "recon_r2": (0.3, "the tokens do not reconstruct the series")}
SHAPE_CORR = 0.9


# ----------------------------------------------------------------------------- metrics
def shape_clusters(shapes: torch.Tensor, usage: torch.Tensor, r: float = SHAPE_CORR) -> torch.Tensor:
    """Cluster id (U,) of each shape (U, L): taken in order of `usage` (most used first), a shape joins
    the first cluster whose leader it correlates with at Pearson > r, else leads a new one."""
    order = usage.argsort(descending=True)
    z = znorm_rows(shapes[order].double(), floor=1e-12)                    # unbiased std
    corr = z @ z.t() / (z.shape[1] - 1)                                    # (U, U) Pearson r
    leaders: List[int] = []
    label = torch.empty(len(z), dtype=torch.long)
    for i in range(len(z)):
        hit = (corr[i, leaders] > r).nonzero() if leaders else torch.zeros(0, 1)
        if len(hit) == 0:
            leaders.append(i)
        label[order[i]] = len(leaders) - 1 if len(hit) == 0 else int(hit[0])
    return label


def distinct_shapes(shapes: torch.Tensor, usage: torch.Tensor, r: float = SHAPE_CORR) -> int:
    """Number of clusters of `shape_clusters`."""
    return int(shape_clusters(shapes, usage, r).max()) + 1 if len(shapes) else 0


def usage_perplexity(counts: torch.Tensor) -> float:
    p = counts.double() / counts.sum().clamp(min=1)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def span_coverage(t: torch.Tensor, l: torch.Tensor, length: int) -> float:
    """t, l (S, N) as fractions of the window -> mean over series of the covered fraction of its
    `length` time steps (step i sits at i / (length - 1), as in the subsequence extraction)."""
    pos = torch.linspace(0, 1, length, dtype=t.dtype, device=t.device)      # (T,)
    start, end = t[..., None], (t + l).clamp(max=1)[..., None]             # (S, N, 1)
    covered = ((pos >= start) & (pos <= end)).any(dim=1)                   # (S, T)
    return float(covered.float().mean())


def slot_std(v: torch.Tensor) -> float:
    """v (S, N) -> std over series of each token slot, mean over slots (0 for fixed spans)."""
    return float(v.std(dim=0, unbiased=False).mean()) if v.shape[0] > 1 else 0.0


def token_spread(h: torch.Tensor) -> float:
    """h (S, N, d) -> mean over slots and features of the std over series, over the rms of h."""
    if h.shape[0] < 2:
        return 0.0
    return float(h.std(dim=0, unbiased=False).mean() / h.pow(2).mean().sqrt().clamp(min=1e-12))


def r2_rows(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-row R^2 (..., L) -> (...), each row's SS_tot around its own mean."""
    ss_res = (pred - target).pow(2).sum(-1)
    ss_tot = (target - target.mean(-1, keepdim=True)).pow(2).sum(-1)
    return 1 - ss_res / (ss_tot + eps)


def pooled_r2(pred: torch.Tensor, target: torch.Tensor) -> float:
    """1 - sum SS_res / sum SS_tot over rows (..., L), each row centred on its own mean."""
    ss_res = (pred - target).pow(2).sum()
    ss_tot = (target - target.mean(-1, keepdim=True)).pow(2).sum()
    return float(1 - ss_res / ss_tot.clamp(min=1e-12))


# ----------------------------------------------------------------------------- the report
@torch.no_grad()
def teacher_outputs(teacher, dataset, max_windows: int = 512, batch_size: int = 64) -> Dict[str, torch.Tensor]:
    """t, l (S, N), code_idx (S, N), s_hat and its target (S, N, len_s), x_hat and x (S, T) and the
    tokenizer output h (S, N, d) on the first `max_windows` windows of `dataset` (no label text: a
    text-guided teacher uses its whole vocabulary as keys)."""
    keep = ("t", "l", "code_idx", "s_hat", "x_hat", "x", "h")
    parts: Dict[str, List[torch.Tensor]] = {k: [] for k in keep + ("target",)}
    n = min(max_windows, len(dataset))
    for batch in DataLoader(torch.utils.data.Subset(dataset, range(n)), batch_size=batch_size):
        out = teacher(batch["x"], keys="vocab", reconstruct=True)
        for k in keep:
            parts[k].append(out[k].squeeze(-1).cpu() if k in ("t", "l") else out[k].cpu())
        parts["target"].append(extract_subsequence(out["x"], out["t"], out["l"], out["s_hat"].shape[-1]).cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


@torch.no_grad()
def health_report(teacher, dataset, max_windows: int = 512) -> Dict:
    """The health figures of a VQShape teacher on held-out windows (see the module docstring),
    plus `collapsed` (bool) and `collapse_reasons` (the figures under COLLAPSE_LIMITS)."""
    was = teacher.training
    teacher.eval()
    o = teacher_outputs(teacher, dataset, max_windows)
    report = health_figures(o, lambda used: teacher.shape_decoder.decode(teacher.codebook.weight[used]).cpu(),
                            teacher.codebook.num_code)
    report["collapse_reasons"] = collapse_reasons(report)
    report["collapsed"] = bool(report["collapse_reasons"])
    teacher.train(was)
    return report


def health_figures(o: Dict[str, torch.Tensor], decode_codes, num_code: int) -> Dict:
    """The figures from a model's outputs on held-out series: o holds t, l, code_idx (S, N), s_hat and
    target (S, N, len_s), x_hat and x (S, T), optionally h (S, N, d); decode_codes(ids) -> the normalised
    shapes of those codes."""
    counts = torch.bincount(o["code_idx"].flatten(), minlength=num_code)
    used = counts.nonzero().flatten()
    return {
        "distinct_shapes": distinct_shapes(decode_codes(used), counts[used]),
        "codes_used": int(len(used)),
        "perplexity": usage_perplexity(counts),
        "span_coverage": span_coverage(o["t"], o["l"], o["x"].shape[-1]),
        "span_t_std": slot_std(o["t"]),
        "span_l_std": slot_std(o["l"]),
        "shape_fit_r2": float(r2_rows(o["s_hat"].double(), o["target"].double()).median()),
        "recon_r2": pooled_r2(o["x_hat"].double(), o["x"].double()),
        **({"token_spread": token_spread(o["h"].double())} if "h" in o else {}),
        "series": int(o["x"].shape[0]),
    }


def collapse_reasons(report: Dict) -> List[str]:
    return [f"{k}={report[k]:.3g} < {limit}: {meaning}" for k, (limit, meaning) in COLLAPSE_LIMITS.items()
            if not (isinstance(report[k], float) and math.isnan(report[k])) and report[k] < limit]


def format_health(report: Dict) -> str:
    line = (f"distinct shapes {report['distinct_shapes']} (codes used {report['codes_used']}, perplexity "
            f"{report['perplexity']:.1f}), span coverage {report['span_coverage']:.2f}, t std "
            f"{report['span_t_std']:.3f}, l std {report['span_l_std']:.3f}, shape-fit R2 "
            f"{report['shape_fit_r2']:.2f}, reconstruction R2 {report['recon_r2']:.2f}"
            + (f", token spread {report['token_spread']:.3f}" if "token_spread" in report else ""))
    if report["collapsed"]:
        line += ("\n!!! TEACHER COLLAPSED: " + "; ".join(report["collapse_reasons"])
                 + ". What a student distils from these parts of the tokens is close to a constant. !!!")
    return line


def short_teacher_training(overrides, run_dir, steps: int = 300, seed: int = 0) -> Dict:
    """The default teacher (configs/default.yaml + `overrides`), small and signal-only, trained `steps` steps
    (the teacher stage of kd.stages, batches of 16, the last step kept) on generated windows resampled to
    128 steps, into `run_dir`; -> its health report on the held-out subjects. The collapse test's harness
    (tests/test_health.py), and the quick way to compare teacher options (python -m experiments.short_health)."""
    from kd.config import load_config
    from kd.data import build_splits
    from kd.stages import train_teacher
    vq = ("dim=32,enc_layers=1,enc_heads=4,tok_layers=1,tok_heads=4,dec_layers=1,dec_heads=4,num_token=8,"
          "num_code=64,len_s=32,head_hidden=32")
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "default.yaml", [
        "data.name=synthetic", "data.synthetic.num_windows=200", "data.synthetic.num_subjects=5", "data.length=128",
        "data.batch_size=16", "teacher.text_guidance=false", "stage=teacher", "train.teacher_ssl_epochs=0",
        "train.teacher_epochs=1000", f"train.max_steps={steps}", "train.teacher_lr=2e-3", "train.select=last",
        f"seed={seed}", f"run_dir={run_dir}", *[f"teacher.vqshape.{kv}" for kv in vq.split(",")], *overrides])
    splits = build_splits(cfg.data)
    teacher, _ = train_teacher(cfg, splits, None, None, Path(run_dir))
    return health_report(teacher, splits.test)
