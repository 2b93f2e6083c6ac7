"""Cost of ordered alignment in a teacher training step.

The default text-guided teacher (dim 64, 2/2/1 layers, 32 tokens, 6 channels x 512, batch 32, 7
classes with 5 sub-actions each) trained one step at a time with teacher.alignment.target =
"attention" (no scores, no E-step), "set" (scores + class-masked softmax), "ordered" (scores +
forward-backward on the cyclic chain), "realigned" (the E-step on the scores, which read every channel
within 2 time bins) and "realigned_conv" (the same scores read through 3 convolutions over the bins,
alignment.layers); steps interleaved (A, B, C, A, B, C, ...) in this one process so drift hits all alike.
Prints the median step time of each and the ratios to "attention".

    python -m experiments.bench.bench_alignment [--steps 20] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from kd.config import AlignmentConfig, FusionConfig, VQShapeConfig
from teachers.mmvqshape import MMVQShape

# name -> FusionConfig settings (the target under study in configs/synthetic_subactions.yaml last: emissions
# from the code table with scores over +-2 bins, and the same after the switch to the scores)
VARIANTS = {"attention": dict(target="none"),
            "set": dict(target="set", context=2),
            "ordered": dict(target="ordered", context=2),
            "realigned": dict(target="ordered", context=2, scores_from_step=0),
            # the scores read through 3 residual convolutions over the bins (alignment.layers; subactions.md §11)
            "realigned_conv": dict(target="ordered", context=0, layers=3, scores_from_step=0)}


def build(variant: str, seed: int = 0) -> MMVQShape:
    torch.manual_seed(seed)
    n_cls, K, M, Dt = 7, 5, 30, 384
    class_index = torch.arange(n_cls * K).view(n_cls, K) % M
    text = {"vocab_emb": torch.randn(M, Dt), "class_index": class_index,
            "class_mask": torch.ones(n_cls, K, dtype=torch.bool), "label_emb": torch.randn(n_cls, Dt)}
    cfg = VQShapeConfig(dim=64, enc_layers=2, enc_heads=4, tok_layers=2, tok_heads=4, dec_layers=1, dec_heads=4,
                        head_detach=True, lambda_shape_norm=1.0)
    return MMVQShape(cfg, FusionConfig(), 6, n_cls, **text, align=AlignmentConfig(**VARIANTS[variant], warmup_steps=0))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = {t: build(t) for t in VARIANTS}
    opts = {t: torch.optim.AdamW(m.parameters(), lr=1e-3) for t, m in models.items()}
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 6, 512, generator=g), torch.randint(0, 7, (32,), generator=g)
    times = {t: [] for t in VARIANTS}
    for step in range(args.steps + 2):                      # two warm-up rounds
        for t in VARIANTS:
            m, opt = models[t], opts[t]
            t0 = time.perf_counter()
            loss = sum(m.losses(m.fit_forward({"x": x, "y": y}), y).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step >= 2:
                times[t].append(time.perf_counter() - t0)
    base = statistics.median(times["attention"])
    print(f"threads {args.threads}, {args.steps} interleaved steps each, batch 32 x 6 channels x 512")
    for t in VARIANTS:
        med = statistics.median(times[t])
        print(f"{t:14s} median step {med * 1000:7.1f} ms   x{med / base:.3f} of attention")


if __name__ == "__main__":
    main()
