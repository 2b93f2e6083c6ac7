"""Interpretability example: what the text-guided teacher says about a few held-out windows.

For each window, on the channel with the most variance: the signal, the spans [t, t + l] of the
tokens with the longest spans, each span's decoded shape (mapped back to the signal's scale, as in
L_s) drawn over it, and the sub-action sentence the action decoder gives for its shape code.
Computed without label text (the whole vocabulary as keys).

    python -m experiments.interpret_windows --run-dir runs/default --windows 3 --tokens 5 --out FIG.png
"""
from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from kd.evaluate import load_run_teacher  # noqa: E402


def pick_windows(splits, n: int):
    """The first window of each of n different classes in the test split."""
    seen, picks = set(), []
    for i in range(len(splits.test)):
        y = int(splits.test[i]["y"])
        if y not in seen:
            seen.add(y)
            picks.append(i)
        if len(picks) == n:
            break
    return picks


@torch.no_grad()
def describe(teacher, x: torch.Tensor, channel: int, k: int):
    out = teacher(x[None], keys="vocab", reconstruct=True)
    C = x.shape[0]
    t, l = out["t"][channel, :, 0], out["l"][channel, :, 0]                   # (N,)
    s_hat = out["s_hat"][channel]                                            # (N, len_s) on the input scale
    action = out["action_logits"][channel].softmax(-1)                       # (N, M)
    pred = out["logits"][0].softmax(-1)
    order = l.argsort(descending=True)[:k]
    return t, l, s_hat, action, order, pred, C


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--tokens", type=int, default=5)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    run_dir = Path(args.run_dir)
    teacher, meta, _, splits = load_run_teacher(run_dir)
    if "vocab_texts" not in meta:
        raise ValueError(f"{run_dir} holds a signal-only teacher; the figure needs the text-guided one")
    vocab = meta["vocab_texts"]
    picks = pick_windows(splits, args.windows)
    fig, axes = plt.subplots(len(picks), 2, figsize=(15, 3.3 * len(picks)), squeeze=False,
                             gridspec_kw={"width_ratios": [1.2, 1]})
    colors = plt.cm.tab10.colors
    for row, i in enumerate(picks):
        item = splits.test[i]
        x, y = item["x"], int(item["y"])
        channel = int(x.var(dim=-1).argmax())
        t, l, s_hat, action, order, pred, _ = describe(teacher, x, channel, args.tokens)
        T = x.shape[-1]
        ax = axes[row, 0]
        ax.plot(x[channel].numpy(), color="0.6", lw=1, label="signal")
        lines = []
        for j, tok in enumerate(order.tolist()):
            start, end = t[tok].item() * (T - 1), min(t[tok].item() + l[tok].item(), 1.0) * (T - 1)
            xs = torch.linspace(start, end, s_hat.shape[-1])
            ax.plot(xs.numpy(), s_hat[tok].numpy(), color=colors[j], lw=2)
            ax.axvspan(start, end, color=colors[j], alpha=0.08)
            a = action[tok]
            top = int(a.argmax())
            lines.append((colors[j], f"token {tok} [{start:.0f}-{end:.0f}] p={a[top]:.2f}: {vocab[top]}"))
        name = splits.class_names[y]
        guess = splits.class_names[int(pred.argmax())]
        ax.set_title(f"test window {i}: true {name}, teacher says {guess} ({pred.max():.2f}); "
                     f"channel {channel}", fontsize=9)
        ax.set_xlim(0, T - 1)
        tx = axes[row, 1]
        tx.axis("off")
        ypos = 1.0
        for color, text in lines:
            wrapped = textwrap.fill(text, 95)
            tx.text(0, ypos, wrapped, color=color, fontsize=7, va="top", transform=tx.transAxes)
            ypos -= 0.2
    fig.suptitle("Text-guided VQShape teacher, held-out subjects, no label text: longest token spans, "
                 "their decoded shapes and predicted sub-actions", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
