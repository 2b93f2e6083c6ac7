"""Data scale: one training epoch of WRN-16-1 on `synthetic` at 1k, 10k and 100k windows.

Each size runs in its own process (so peak memory is its own): build the subject splits, then one
epoch of the student training step (forward, backward, AdamW) over the lazily generated training
windows. Printed: build time, epoch time, windows/s and peak RSS. Also checks that the text
embeddings of a run are computed once (a second run reads the on-disk cache and loads no model).

    python -m experiments.bench.bench_data [--sizes 1000,10000,100000]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def one_size(n: int) -> dict:
    import torch
    import torch.nn.functional as F
    from kd.config import load_config
    from kd.data import build_splits
    from kd.engine import train_loader
    from students import build_student
    torch.manual_seed(0)
    cfg = load_config(overrides=["data.name=synthetic", f"data.synthetic.num_windows={n}"])
    t0 = time.perf_counter()
    splits = build_splits(cfg.data)
    build_s = time.perf_counter() - t0
    model = build_student("wrn16_1", cfg.student.cnn, cfg.student.vqshape, splits.num_channels, len(splits.class_names))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = train_loader(splits.train, 32, 0)
    t0 = time.perf_counter()
    for batch in loader:
        loss = F.cross_entropy(model(batch["x"]).logits, batch["y"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    epoch_s = time.perf_counter() - t0
    return {"windows": n, "train_windows": len(splits.train), "build_s": build_s, "epoch_s": epoch_s,
            "windows_per_s": len(splits.train) / epoch_s,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def text_once() -> dict:
    """Two tiny synthetic runs sharing a fresh cache dir: how often was the text model loaded?"""
    code = ("import sys, json\n"
            "import kd.text.encoder as E\n"
            "calls = {'load': 0, 'embed': 0}\n"
            "orig_load, orig_embed = E.TextEncoder._load, E.TextEncoder._embed\n"
            "def load(self): calls['load'] += 1; return orig_load(self)\n"
            "def embed(self, t): calls['embed'] += 1; return orig_embed(self, t)\n"
            "E.TextEncoder._load, E.TextEncoder._embed = load, embed\n"
            "import distill\n"
            "distill.main(sys.argv[1:])\n"
            "print('CALLS', json.dumps(calls))\n")   # cwd=ROOT: `python -c` imports from there
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run in ("first", "second"):
            args = ["--config", "configs/synthetic_smoke.yaml", f"run_dir={tmp}/{run}", f"text.cache_dir={tmp}/cache",
                    "stage=teacher"]
            res = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True,
                                 env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=True)
            out[run] = json.loads(res.stdout.split("CALLS", 1)[1])
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,10000,100000")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print("RESULT", json.dumps(one_size(args.one)))
        return
    print("synthetic (3 x 512), WRN-16-1 training epoch, batch 32, 2 threads")
    rows = []
    for n in map(int, args.sizes.split(",")):
        res = subprocess.run([sys.executable, __file__, "--one", str(n)], cwd=ROOT, capture_output=True, text=True,
                             check=True)
        r = json.loads(res.stdout.split("RESULT", 1)[1])
        rows.append(r)
        print(f"  {n:7d} windows ({r['train_windows']:6d} train): build {r['build_s']:6.2f} s, epoch {r['epoch_s']:7.1f} s, "
              f"{r['windows_per_s']:6.0f} windows/s, peak RSS {r['peak_rss_mb']:6.0f} MB")
    base = rows[0]
    for r in rows[1:]:
        print(f"  epoch time x{r['epoch_s'] / base['epoch_s']:.1f} for x{r['train_windows'] / base['train_windows']:.0f} "
              f"training windows")
    calls = text_once()
    print(f"text model loads / embedding calls: first run {calls['first']}, second run (cache) {calls['second']}")


if __name__ == "__main__":
    main()
