"""Interpretability artefacts written with every VQShape teacher: a gallery of the distinct
decoded shapes of the used codes (with usage counts), held-out windows with every token's shape
drawn at its span, the code x sub-action matrix from the action decoder, held-out windows of each
class coloured by decoded sub-action (ordered alignment), and code-usage statistics."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from teachers.health import shape_clusters  # noqa: E402

MAX_GALLERY = 64


@torch.no_grad()
def code_usage(teacher, dataset, batch_size: int = 64) -> torch.Tensor:
    """Counts (K,) of each shape code over every token of `dataset` (no label text used)."""
    counts = torch.zeros(teacher.codebook.num_code, dtype=torch.long)
    for batch in DataLoader(dataset, batch_size=batch_size):
        idx = teacher(batch["x"], keys="vocab", reconstruct=False)["code_idx"].flatten().cpu()
        counts += torch.bincount(idx, minlength=len(counts))
    return counts


def usage_stats(counts: torch.Tensor) -> Dict:
    p = counts.float() / counts.sum().clamp(min=1)
    h = -(p[p > 0] * p[p > 0].log()).sum()
    return {"codes_used": int((counts > 0).sum()), "codebook_size": len(counts),
            "perplexity": float(math.exp(h)), "tokens": int(counts.sum())}


@torch.no_grad()
def shape_gallery(teacher, counts: torch.Tensor, path: Path) -> None:
    """One panel per distinct shape (teachers/health.py clusters at Pearson r > 0.9): the leader's
    decoded shape, the tokens of the whole cluster and how many codes it holds."""
    used = counts.nonzero().flatten()
    shapes = teacher.shape_decoder.decode(teacher.codebook.weight[used]).cpu()   # (U, len_s)
    label = shape_clusters(shapes, counts[used])
    n_clusters = int(label.max()) + 1 if len(used) else 0
    tokens = torch.zeros(n_clusters, dtype=torch.long).index_add_(0, label, counts[used])
    order = tokens.argsort(descending=True)[:MAX_GALLERY]
    cols = 8
    rows = max(1, math.ceil(len(order) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 1.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, c in zip(axes.flat, order.tolist()):
        members = (label == c).nonzero().flatten()
        lead = members[counts[used][members].argmax()]
        ax.plot(shapes[lead].numpy(), lw=1)
        ax.set_title(f"code {int(used[lead])} (+{len(members) - 1}): n={int(tokens[c])}", fontsize=7)
    fig.suptitle(f"{n_clusters} distinct decoded shapes (Pearson r > 0.9 clusters) of the {len(used)} used codes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def token_windows(teacher, dataset, class_names, path: Path, windows: int = 4) -> None:
    """Held-out windows (spread over the split), one row each, on the channel with the largest
    variance: the signal, and every token's scaled decoded shape drawn over it at its span
    [t, t + l], coloured by code. A teacher whose rows all look alike has collapsed."""
    picks = torch.linspace(0, len(dataset) - 1, min(windows, len(dataset))).long().tolist()
    x = torch.stack([dataset[i]["x"] for i in picks])                       # (W, C, T)
    out = teacher(x, keys="vocab", reconstruct=True)
    C, T = x.shape[1], x.shape[2]
    fig, axes = plt.subplots(len(picks), 1, figsize=(12, 2.2 * len(picks)), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for row, ax in enumerate(axes[:, 0]):
        c = int(x[row].var(dim=-1).argmax())
        s = row * C + c                                                     # series index (B*C folded)
        ax.plot(range(T), x[row, c].numpy(), color="0.6", lw=1, label=f"channel {c}")
        for tok in range(out["t"].shape[1]):
            t0, l0 = float(out["t"][s, tok]), float(out["l"][s, tok])
            end = min(t0 + l0, 1.0)
            span = torch.linspace(t0 * (T - 1), end * (T - 1), out["s_hat"].shape[-1])
            code = int(out["code_idx"][s, tok])
            ax.plot(span.numpy(), out["s_hat"][s, tok].numpy(), color=cmap(code % 20), lw=1.2)
        label = class_names[int(dataset[picks[row]]["y"])]
        ax.set_title(f"held-out window {picks[row]} {label}: signal (grey) and token shapes at their spans",
                     fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@torch.no_grad()
def action_matrix(teacher, counts: torch.Tensor, vocab_texts, path: Path) -> torch.Tensor:
    """Rows: used codes (by usage); columns: sub-actions; cells: action-decoder probabilities."""
    used = counts.argsort(descending=True)[: min(MAX_GALLERY, int((counts > 0).sum()))]
    probs = teacher.action_decoder(teacher.codebook.weight[used]).softmax(-1).cpu()  # (U, M)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * probs.shape[1] + 3), max(4, 0.18 * len(used) + 2)))
    im = ax.imshow(probs.numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_yticks(range(len(used)), [str(c) for c in used.tolist()], fontsize=6)
    ax.set_xticks(range(probs.shape[1]), [t[:40] for t in vocab_texts], rotation=90, fontsize=6)
    ax.set_ylabel("shape code (most used first)")
    fig.colorbar(im, ax=ax, label="p(sub-action | code)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return probs


@torch.no_grad()
def subaction_windows(teacher, dataset, class_names, vocab_texts, path: Path) -> None:
    """One held-out window per class (channel of largest variance): the background of the upper band
    is coloured by the Viterbi sub-action given the true class, the lower band by the label-free
    sub-action (argmax over the whole vocabulary, no class given); each time step takes the token
    whose span covers it (kd.recovery.step_predictions). Legend: the sub-action sentences."""
    from kd.recovery import step_predictions
    labels = dataset.labels
    picks = [int((labels == c).nonzero()[0][len((labels == c).nonzero()[0]) // 2])
             for c in range(len(class_names)) if (labels == c).any()]
    batch = [dataset[i] for i in picks]
    x, y = torch.stack([b["x"] for b in batch]), torch.stack([b["y"] for b in batch])
    dec = teacher.decode_subactions(x, y)                                   # (W*C, N) vocabulary ids
    C, T = x.shape[1], x.shape[2]
    cmap = plt.get_cmap("tab20")
    fig, axes = plt.subplots(len(picks), 1, figsize=(12, 1.9 * len(picks)), squeeze=False)
    for row, ax in enumerate(axes[:, 0]):
        c = int(x[row].var(dim=-1).argmax())
        s = row * C + c
        sig = x[row, c]
        lo, hi = float(sig.min()), float(sig.max())
        band = (hi - lo) * 0.15 + 1e-6
        for k, (key, y0) in enumerate((("viterbi", hi + band), ("free", hi))):
            steps = step_predictions(dec[key][s][None], dec["t"][s][None].float(), dec["l"][s][None].float(), T)[0]
            ax.imshow(steps[None].numpy() % 20, aspect="auto", cmap=cmap, vmin=0, vmax=19,
                      extent=(0, T - 1, y0, y0 + band), alpha=0.8)
        ax.plot(range(T), sig.numpy(), color="k", lw=0.8)
        ax.set_ylim(lo - 0.05 * band, hi + 2 * band)
        ax.set_xlim(0, T - 1)
        used = sorted(set(dec["viterbi"][s].tolist()) | set(dec["free"][s].tolist()))
        handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(m % 20)) for m in used]
        ax.legend(handles, [vocab_texts[m][:60] for m in used], fontsize=5, loc="lower left", ncol=2)
        ax.set_title(f"{class_names[int(y[row])]} (window {picks[row]}, channel {c}): upper band = Viterbi "
                     f"given the class, lower band = label-free", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_teacher_artifacts(teacher, splits, out_dir: Path, bank=None) -> Dict:
    """Writes shapes.png, code_actions.png (text-guided only) and code_usage.json into out_dir."""
    out_dir = Path(out_dir)
    was = teacher.training
    teacher.eval()
    counts = code_usage(teacher, splits.test)
    stats = usage_stats(counts)
    shape_gallery(teacher, counts, out_dir / "shapes.png")
    token_windows(teacher, splits.test, splits.class_names, out_dir / "token_windows.png")
    files = ["shapes.png", "token_windows.png", "code_usage.json"]
    if teacher.num_actions:
        texts = list(bank.vocab_texts) if bank is not None else [str(i) for i in range(teacher.M)]
        action_matrix(teacher, counts, texts, out_dir / "code_actions.png")
        files.append("code_actions.png")
        if teacher.aligned:
            subaction_windows(teacher, splits.test, splits.class_names, texts, out_dir / "subaction_windows.png")
            files.append("subaction_windows.png")
    (out_dir / "code_usage.json").write_text(json.dumps({**stats, "counts": counts.tolist()}))
    teacher.train(was)
    return {**stats, "files": [str(out_dir / f) for f in files]}
