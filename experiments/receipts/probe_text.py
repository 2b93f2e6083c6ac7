"""Sanity probe for the sub-action text (METHOD.md §2; a receipt, not part of training).

Do a class's sub-action sentences carry the meaning of its label? An MLP maps the concatenated
(zero-padded to K_max) sub-action embeddings of a class to its label embedding; it is trained on
some classes and tested on held-out ones (leave-`--heldout`-classes-out over every split, or
`--folds` random ones, times `--seeds`). Printed for the held-out classes:
  - cosine(prediction, true label) and the label retrieval accuracy (is the true label the nearest
    of the held-out labels? chance = 1/heldout),
  - reference 1: the mean sub-action embedding of the class vs its label (no training),
  - reference 2: the mean *training* label vs the held-out label (what "predict the average" gets).
With only a few classes to learn from, a probe near reference 2 means the MLP learned the average
label; above it, the sub-actions carry label information that transfers to unseen classes.

    python -m experiments.receipts.probe_text --dataset watch --heldout 2 --seeds 3
    python -m experiments.receipts.probe_text --file my_classes.yaml          # any description file
"""
from __future__ import annotations

import argparse
import itertools
import random
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from kd.config import TextConfig
from kd.text import build_text_bank, default_file, read_class_names


def padded(bank) -> torch.Tensor:
    """(n_cls, K_max * D): each class's sub-action embeddings, zero-padded to K_max and flattened."""
    K = max(len(s) for s in bank.sub_emb_per_class)
    return torch.stack([F.pad(s, (0, 0, 0, K - len(s))).flatten() for s in bank.sub_emb_per_class])


def fit_probe(x: torch.Tensor, y: torch.Tensor, seed: int, steps: int) -> nn.Module:
    torch.manual_seed(seed)
    mlp = nn.Sequential(nn.Linear(x.shape[1], 256), nn.GELU(), nn.Dropout(0.2), nn.Linear(256, y.shape[1]))
    opt = torch.optim.AdamW(mlp.parameters(), lr=1e-3, weight_decay=0.05)
    for _ in range(steps):
        loss = (1 - F.cosine_similarity(mlp(x), y, dim=-1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return mlp.eval()


def splits(n: int, k: int, folds: int, seed: int = 0):
    every = list(itertools.combinations(range(n), k))
    return every if len(every) <= folds else random.Random(seed).sample(every, folds)


def scores(pred: torch.Tensor, labels: torch.Tensor, held: list) -> tuple[float, float]:
    """(mean cosine to the true label, share whose nearest held-out label is the true one).

    Retrieval is among the held-out labels only: a probe fitted on the training labels is always
    nearest to one of them, so ranking all n labels would measure memorisation, not transfer."""
    target = labels[held]                                                   # (k, D)
    cos = F.cosine_similarity(pred, target, dim=-1).mean().item()
    nearest = (F.normalize(pred, dim=-1) @ target.t()).argmax(-1)           # (k,)
    return cos, (nearest == torch.arange(len(held))).float().mean().item()


def run(bank, heldout: int, seeds: int, folds: int, steps: int) -> dict:
    x, y, n = padded(bank), bank.label_emb, len(bank.class_names)
    mean_sub = torch.stack([s.mean(0) for s in bank.sub_emb_per_class])      # (n_cls, D)
    out = {k: [] for k in ("probe_cos", "probe_acc", "sub_cos", "sub_acc", "train_label_cos")}
    for held in map(list, splits(n, heldout, folds)):
        train = [c for c in range(n) if c not in held]
        for seed in range(seeds):
            mlp = fit_probe(x[train], y[train], seed, steps)
            with torch.no_grad():
                pred = mlp(x[held])                                           # (heldout, D)
            for key, v in zip(("probe_cos", "probe_acc"), scores(pred, y, held)):
                out[key].append(v)
        for key, v in zip(("sub_cos", "sub_acc"), scores(mean_sub[held], y, held)):
            out[key].append(v)
        out["train_label_cos"].append(F.cosine_similarity(y[train].mean(0, keepdim=True), y[held], dim=-1).mean().item())
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="watch", help="packaged description file kd/text/descriptions/<name>.yaml")
    p.add_argument("--file", default=None, help="any description YAML (overrides --dataset)")
    p.add_argument("--heldout", type=int, default=2, help="classes held out per split")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--folds", type=int, default=30, help="at most this many held-out splits (random if more exist)")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps per probe")
    p.add_argument("--model", default=TextConfig.model)
    p.add_argument("--cache-dir", default=TextConfig.cache_dir)
    args = p.parse_args()
    torch.set_num_threads(1)      # tiny matmuls: extra threads only add synchronisation (30x slower on 2 busy cores)
    t0 = time.perf_counter()
    file = args.file or str(default_file(args.dataset))
    names = read_class_names(file)                     # the probe does not need the data's class order
    if not 1 <= args.heldout < len(names) - 1:
        p.error(f"--heldout must be in [1, {len(names) - 2}] for {len(names)} classes (train on >= 2)")
    bank = build_text_bank(TextConfig(model=args.model, file=file, cache_dir=args.cache_dir), names, args.dataset)
    r = run(bank, args.heldout, args.seeds, args.folds, args.steps)
    fmt = lambda v: f"{statistics.mean(v):.3f} ± {statistics.pstdev(v):.3f}"  # noqa: E731
    print(f"{file}: {len(names)} classes, M = {bank.M} vocabulary entries (threshold {bank.threshold}), "
          f"{len(r['sub_cos'])} splits x {args.seeds} seeds, {args.heldout} held out, model {bank.model}")
    print(f"  MLP probe          held-out cos(pred, label) {fmt(r['probe_cos'])}   "
          f"label retrieval acc {fmt(r['probe_acc'])} (chance {1 / args.heldout:.3f})")
    print(f"  ref: mean sub-action vs label               {fmt(r['sub_cos'])}   label retrieval acc {fmt(r['sub_acc'])}")
    print(f"  ref: mean training label vs held-out label  {fmt(r['train_label_cos'])}")
    print(f"  ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
