"""Cost of a distillation step with live teacher outputs against cached ones (train.cache_teacher).

The default pairing (configs/default.yaml: text-guided VQShape teacher -> WRN-16-1, workspace,
dynamic coefficients) on the watch training windows, batch 32, a trained teacher from TEACHER_DIR
(<run_dir>/teacher of any default-config run). Steps alternate live, cached, live, ... in this one
process so drift hits both alike; each step is a full student step (teacher outputs, forward,
backward, AdamW). Prints the median step of each, the ratio, the one-off cost of filling the cache
and its memory, and what a 570-step student stage costs either way.

    python -m experiments.bench.bench_teacher_cache TEACHER_DIR [--steps 20] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from kd.config import load_config
from kd.data import build_splits
from kd.engine import TeacherCache
from kd.stages import build_distiller, load_teacher


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("teacher_dir")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config("configs/default.yaml")
    splits = build_splits(cfg.data)
    teacher, _ = load_teacher(Path(args.teacher_dir), splits)
    distiller = build_distiller(cfg, splits, teacher)
    opt = torch.optim.AdamW([p for p in distiller.parameters() if p.requires_grad], cfg.train.lr)
    t0 = time.perf_counter()
    cache = TeacherCache(teacher, splits.train, cfg.data.eval_batch_size)
    fill = time.perf_counter() - t0
    g = torch.Generator().manual_seed(0)
    times = {"live": [], "cached": []}
    distiller.train()
    for step in range(2 * args.steps + 2):
        idx = torch.randint(len(splits.train), (cfg.data.batch_size,), generator=g)
        batch = {k: torch.stack([splits.train[int(i)][k] for i in idx]) for k in ("x", "y", "index")}
        mode = ("live", "cached")[step % 2]
        t = time.perf_counter()
        if mode == "live":
            with torch.no_grad():
                t_out = teacher.teach(batch["x"], batch["y"])
        else:
            t_out = cache.teach_batch(batch)
        terms, _ = distiller(batch, t_out)
        sum(terms.values()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= 2:                      # the first pair warms up the allocator
            times[mode].append(time.perf_counter() - t)
    live, cached = statistics.median(times["live"]), statistics.median(times["cached"])
    print(f"threads {args.threads}, {args.steps} steps each, batch {cfg.data.batch_size}")
    print(f"step with live teacher   {live * 1e3:8.1f} ms")
    print(f"step with cached outputs {cached * 1e3:8.1f} ms   ratio live/cached {live / cached:.2f}")
    print(f"filling the cache: {fill:.1f} s for {len(splits.train)} windows, {cache.nbytes / 2**20:.0f} MiB")
    print(f"570-step student stage: live {570 * live / 60:.1f} min, cached {(570 * cached + fill) / 60:.1f} min")


if __name__ == "__main__":
    main()
