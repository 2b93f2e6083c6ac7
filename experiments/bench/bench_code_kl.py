"""Cost of the code-KL loss (kd/losses/code_kl.py) against its first formulation, forward + backward.

The default pairing's code_dist is (B=32, G=192 tokens, K=512 codes): the largest tensor a distilled
student step touches (a profile of the default student step on watch put the loss at 37 % of the
forward). The first formulation negated and divided (two passes) and summed p_t * (log p_t - log p_s)
explicitly; the project's scales once per side and uses the fused KL. Both run alternately in this one
process; prints the median and the minimum of each (the minimum is the steadier on a shared
machine), their ratios, and the largest differences in value and gradient.

    python -m experiments.bench.bench_code_kl [--reps 20] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from kd.losses import code_kl_loss


def first_formulation(s_dist: torch.Tensor, t_dist: torch.Tensor, tau: float) -> torch.Tensor:
    log_s = F.log_softmax(-s_dist.float() / tau, dim=-1)
    log_t = F.log_softmax(-t_dist.detach().float() / tau, dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum(-1).mean()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    s = (torch.rand(32, 192, 512, generator=g) * 8).requires_grad_(True)
    t = torch.rand(32, 192, 512, generator=g) * 8
    times, out = {"first": [], "project": []}, {}
    for rep in range(args.reps + 1):
        for name, f in (("first", first_formulation), ("project", code_kl_loss)):
            t0 = time.perf_counter()
            v = f(s, t, 1.0)
            v.backward()
            if rep:                                       # the first round warms up the allocator
                times[name].append(time.perf_counter() - t0)
            out[name] = (v.item(), s.grad.clone())
            s.grad = None
    for stat, fn in (("median", statistics.median), ("min", min)):
        m = {k: fn(v) * 1000 for k, v in times.items()}
        print(f"code_dist (32, 192, 512), {args.threads} thread(s), {stat} of {args.reps} forward+backward: "
              f"first formulation {m['first']:.1f} ms, project {m['project']:.1f} ms, "
              f"ratio {m['first'] / m['project']:.2f}x")
    print(f"  value difference {abs(out['first'][0] - out['project'][0]):.2e}, "
          f"max gradient difference {(out['first'][1] - out['project'][1]).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
