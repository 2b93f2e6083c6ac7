"""Interpretability artefacts written with every VQShape teacher: a gallery of the decoded
shapes of the used codes (with usage counts), the code x sub-action matrix from the action
decoder, and code-usage statistics (codes used, perplexity)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, Optional

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

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
    used = counts.argsort(descending=True)[: min(MAX_GALLERY, int((counts > 0).sum()))]
    shapes = teacher.shape_decoder.decode(teacher.codebook.weight[used]).cpu()   # (U, len_s)
    cols = 8
    rows = max(1, math.ceil(len(used) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 1.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, code, s in zip(axes.flat, used.tolist(), shapes):
        ax.plot(s.numpy(), lw=1)
        ax.set_title(f"code {code}: n={int(counts[code])}", fontsize=7)
    fig.suptitle(f"Decoded shapes of the {len(used)} most used codes (of {int((counts > 0).sum())} used)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
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


def write_teacher_artifacts(teacher, splits, out_dir: Path, bank=None) -> Dict:
    """Writes shapes.png, code_actions.png (text-guided only) and code_usage.json into out_dir."""
    out_dir = Path(out_dir)
    was = teacher.training
    teacher.eval()
    counts = code_usage(teacher, splits.test)
    stats = usage_stats(counts)
    shape_gallery(teacher, counts, out_dir / "shapes.png")
    files = ["shapes.png", "code_usage.json"]
    if getattr(teacher, "action_decoder", None) is not None:
        texts = list(bank.vocab_texts) if bank is not None else [str(i) for i in range(teacher.M)]
        action_matrix(teacher, counts, texts, out_dir / "code_actions.png")
        files.append("code_actions.png")
    (out_dir / "code_usage.json").write_text(json.dumps({**stats, "counts": counts.tolist()}))
    teacher.train(was)
    return {**stats, "files": [str(out_dir / f) for f in files]}
