"""What telling the sub-action timeline costs at inference, beside the class alone, on one exported student.

The student must carry a sub-action read-out (distilled with kd.sub_kl from an ordered-alignment teacher, e.g.
configs/hapt/episodes_subactions.yaml). Timed per window at batch 1 and per window at batch 64, 1 thread, under
torch.inference_mode, after warm-up, on random windows of the student's shape: the class alone in the fused
inference form (what `kd.predict` runs), the class alone eagerly, and the timeline (`Predictor.timeline`:
the eager student, the token adapter, the sub-action head, both decodings). Rounds visit every form in turn;
each prints the median over rounds of the per-round median.

    python -m experiments.bench.bench_timeline --model RUN/student [--runs 300] [--rounds 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from kd.predict import Predictor


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    fused, eager = Predictor(args.model), Predictor(args.model, fused=False)
    g = torch.Generator().manual_seed(0)
    rows = {}
    for batch in (1, 64):
        x = torch.randn(batch, fused.num_channels, fused.length, generator=g)
        forms = {"class only, fused": lambda: fused.logits(x), "class only, eager": lambda: eager.logits(x),
                 "timeline (class + both decodings)": lambda: eager.timeline(x)}
        times = {name: [] for name in forms}
        with torch.inference_mode():
            for f in forms.values():
                for _ in range(5):
                    f()
            for _ in range(args.rounds):
                for name, f in forms.items():
                    per = []
                    for _ in range(max(1, args.runs // args.rounds // (1 if batch == 1 else 16))):
                        t0 = time.perf_counter()
                        f()
                        per.append((time.perf_counter() - t0) / batch)
                    times[name].append(statistics.median(per))
        for name, t in times.items():
            rows[(batch, name)] = statistics.median(t) * 1e3
    base = {b: rows[(b, "class only, fused")] for b in (1, 64)}
    print(f"{args.model}: {fused.num_channels} x {fused.length} windows, 1 thread")
    print("| form | ms per window, batch 1 | ratio | ms per window, batch 64 | ratio |\n|---|---|---|---|---|")
    for name in ("class only, fused", "class only, eager", "timeline (class + both decodings)"):
        print(f"| {name} | {rows[(1, name)]:.2f} | {rows[(1, name)] / base[1]:.1f}x | {rows[(64, name)]:.3f} | "
              f"{rows[(64, name)] / base[64]:.1f}x |")
    return rows


if __name__ == "__main__":
    main()
