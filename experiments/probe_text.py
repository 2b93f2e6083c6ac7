"""Sanity probe for the sub-action text (../shared/DESIGN.md §2; a tool, not part of training).

Does the set of sub-action sentences of a class carry the meaning of its label? An MLP maps the
concatenated (zero-padded) sub-action embeddings of a class to its label embedding; it is trained
on some classes and tested on held-out ones (every split of `--heldout` classes, several seeds).
Printed: held-out cosine similarity, next to two references that need no training — the mean
sub-action embedding vs the label, and the mean *training* label vs the held-out label.

    python experiments/probe_text.py --dataset watch --heldout 2 --seeds 3
"""
from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
from kd.config import TextConfig  # noqa: E402
from kd.data import build_splits  # noqa: E402
from kd.config import load_config  # noqa: E402
from kd.text import build_text_bank  # noqa: E402


def padded(bank) -> torch.Tensor:
    K = max(len(s) for s in bank.sub_emb_per_class)
    return torch.stack([F.pad(s, (0, 0, 0, K - len(s))).flatten() for s in bank.sub_emb_per_class])


def fit_probe(x, y, seed: int, steps: int = 300) -> nn.Module:
    torch.manual_seed(seed)
    mlp = nn.Sequential(nn.Linear(x.shape[1], 256), nn.GELU(), nn.Dropout(0.2), nn.Linear(256, y.shape[1]))
    opt = torch.optim.AdamW(mlp.parameters(), lr=1e-3, weight_decay=0.05)
    for _ in range(steps):
        loss = (1 - F.cosine_similarity(mlp(x), y, dim=-1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return mlp.eval()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="watch", choices=["watch", "synthetic"])
    p.add_argument("--heldout", type=int, default=2)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--cache-dir", default=".cache/text")
    args = p.parse_args()
    class_names = build_splits(load_config(overrides=[f"data.name={args.dataset}"]).data).class_names
    bank = build_text_bank(TextConfig(cache_dir=args.cache_dir), class_names, args.dataset)
    x, y = padded(bank), bank.label_emb
    n = len(class_names)
    probe, mean_sub, mean_label = [], [], []
    for held in itertools.combinations(range(n), args.heldout):
        train = [c for c in range(n) if c not in held]
        h = torch.tensor(held)
        for seed in range(args.seeds):
            mlp = fit_probe(x[train], y[train], seed)
            with torch.no_grad():
                pred = mlp(x[h])
            probe.append(F.cosine_similarity(pred, y[h], dim=-1).mean().item())
        mean_sub.append(F.cosine_similarity(torch.stack([bank.sub_emb_per_class[c].mean(0) for c in held]),
                                            y[h], dim=-1).mean().item())
        mean_label.append(F.cosine_similarity(y[train].mean(0, keepdim=True), y[h], dim=-1).mean().item())
    fmt = lambda v: f"{statistics.mean(v):.3f} ± {statistics.pstdev(v):.3f}"  # noqa: E731
    print(f"{args.dataset}: {n} classes, M = {bank.M} sub-actions, {len(mean_sub)} splits x {args.seeds} seeds, "
          f"{args.heldout} held out")
    print(f"  MLP probe, held-out cosine(pred, label)      {fmt(probe)}")
    print(f"  reference: mean sub-action vs label          {fmt(mean_sub)}")
    print(f"  reference: mean training label vs held-out   {fmt(mean_label)}")


if __name__ == "__main__":
    main()
