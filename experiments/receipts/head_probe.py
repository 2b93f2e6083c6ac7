"""How much class information a trained VQShape teacher's tokens hold, read by two heads: the flat MLP
(`vqshape.head_arch: flat`, one weight per token slot) and the convolutional one (`head_arch: conv`).

For each finished teacher run: its attribute tokens (z_q, mu, sigma, t, l; eval mode, no label text) and
channel statistics on the training, validation and test windows are computed once; each head
(kd.vqshape.TokenHead, as the teacher builds it) is trained on the frozen training tokens (AdamW, lr 1e-3,
one-cycle schedule, batch 32, 30 epochs; seeds 0 and 1), the epoch chosen by validation macro-F1; its test
macro-F1 is reported beside the teacher's own (its head trained with the teacher, on masked tokens).

    python -m experiments.receipts.head_probe runs/cv/ensemble/teachers/vqshape_9f7e9149/fold0 [RUN_DIR ...] [--out FILE]
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from experiments.run_reports import main_over_runs
from kd.evaluate import load_run_teacher
from kd.metrics import confusion_matrix, macro_f1
from kd.vqshape import TokenHead, in_span_order

EPOCHS, BATCH, LR, SEEDS = 30, 32, 1e-3, (0, 1)


@torch.no_grad()
def tokens_of(teacher, dataset) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> attribute tokens (S, C*N, k), each channel's in span order; channel mean and std (S, C); labels."""
    parts = []
    for batch in DataLoader(dataset, batch_size=64):
        out = teacher(batch["x"], keys="vocab", reconstruct=False)
        B = len(batch["y"])
        tok = in_span_order(out["tokens"], out["t"], out["l"])
        parts.append((tok.reshape(B, -1, tok.shape[-1]), out["mean"].view(B, -1), out["std"].view(B, -1), batch["y"]))
    return tuple(torch.cat(p) for p in zip(*parts))


def augmented(tokens: torch.Tensor, y: torch.Tensor, num_channels: int, roll: bool, mix_alpha: float):
    """A training batch's tokens (B, C*N, k), each channel's in span order, changed for the head's training:
    `roll` shifts every window's token sequence by a random number of positions (the same for its channels,
    circularly: an exercise window is a few repetitions at no fixed phase); `mix_alpha` > 0 mixes windows
    (mixup, lam ~ Beta(a, a)). -> tokens, (y_a, y_b, lam)."""
    B, CN, k = tokens.shape
    if roll:
        N = CN // num_channels
        idx = (torch.arange(N)[None] + torch.randint(0, N, (B, 1))) % N                    # (B, N)
        tokens = tokens.view(B, num_channels, N, k).gather(
            2, idx[:, None, :, None].expand(B, num_channels, N, k)).view(B, CN, k)
    lam = torch.ones(B)
    perm = torch.arange(B)
    if mix_alpha > 0:
        lam = torch.distributions.Beta(mix_alpha, mix_alpha).sample((B,))
        perm = torch.randperm(B)
        tokens = lam[:, None, None] * tokens + (1 - lam[:, None, None]) * tokens[perm]
    return tokens, (y, y[perm], lam)


def fit(head: TokenHead, train, val, test, n_cls: int, seed: int, roll: bool = False,
        mix_alpha: float = 0.0) -> Dict[str, float]:
    """train, val, test: (tokens, mean, std, y). `roll` / `mix_alpha`: see `augmented` (off by default)."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(head.parameters(), LR, weight_decay=0.01)
    steps = EPOCHS * -(-len(train[3]) // BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, LR, total_steps=steps, pct_start=0.1)
    best = {"val_macro_f1": -1.0}
    for epoch in range(EPOCHS):
        head.train()
        perm = torch.randperm(len(train[3]))
        for i in range(0, len(perm), BATCH):
            j = perm[i:i + BATCH]
            if roll or mix_alpha > 0:
                tok, (ya, yb, lam) = augmented(train[0][j], train[3][j], head.num_channels, roll, mix_alpha)
                logits = head(tok, train[1][j], train[2][j])
                loss = (lam * F.cross_entropy(logits, ya, reduction="none")
                        + (1 - lam) * F.cross_entropy(logits, yb, reduction="none")).mean()
            else:
                loss = F.cross_entropy(head(train[0][j], train[1][j], train[2][j]), train[3][j])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        head.eval()
        with torch.no_grad():
            v, t = (macro_f1(confusion_matrix(s[3].numpy(), head(s[0], s[1], s[2]).argmax(1).numpy(), n_cls))
                    for s in (val, test))
        if v > best["val_macro_f1"]:
            best = {"val_macro_f1": v, "test_macro_f1": t, "epoch": epoch + 1}
    return best


def report(run_dir: Path) -> Dict:
    teacher, _, cfg, splits = load_run_teacher(run_dir)
    teacher.eval()
    train, val, test = (tokens_of(teacher, s) for s in (splits.train, splits.val, splits.test))
    n_cls, C, v = len(splits.class_names), splits.num_channels, cfg.teacher.vqshape
    row = {"run": str(run_dir),
           "teacher_macro_f1": json.loads((run_dir / "results.json").read_text())["teacher"]["macro_f1"]}
    for arch in ("flat", "conv"):
        fits = [fit(TokenHead(C, v.num_token, train[0].shape[-1], n_cls, v.head_hidden, v.head_channel_stats,
                              v.dropout, arch=arch), train, val, test, n_cls, seed) for seed in SEEDS]
        row[arch] = fits
        row[f"{arch}_test_macro_f1"] = sum(f["test_macro_f1"] for f in fits) / len(fits)
    return row


if __name__ == "__main__":
    main_over_runs(__doc__, report)
