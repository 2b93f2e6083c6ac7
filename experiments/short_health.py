"""Teacher options compared by a short training: the default teacher made small (the collapse test's
harness, teachers.health.short_teacher_training), trained 300 steps on generated windows, once per
option, token count and seed; prints and writes every health figure.

    python -m experiments.short_health --variant default= \
        --variant span_overlap=teacher.vqshape.decoder_input=span_overlap \
        --num-token 8,32 --seeds 0,1 --out experiments/results/short_health_span_overlap.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import torch

from teachers.health import short_teacher_training


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", action="append", required=True,
                   help="NAME=override[,override...] (an empty right side: the default)")
    p.add_argument("--num-token", default="8,32")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for spec in args.variant:
        name, _, ovs = spec.partition("=")
        for n in (int(v) for v in args.num_token.split(",")):
            for seed in (int(v) for v in args.seeds.split(",")):
                t0 = time.time()
                with tempfile.TemporaryDirectory() as run_dir:
                    rep = short_teacher_training([f"teacher.vqshape.num_token={n}", *filter(None, ovs.split(","))],
                                                 run_dir, args.steps, seed)
                rows.append({"variant": name, "num_token": n, "seed": seed, "wall_s": round(time.time() - t0),
                             **{k: v for k, v in rep.items() if k != "collapse_reasons"}})
                print(json.dumps(rows[-1]), flush=True)
    out = {"command": "python -m experiments.short_health " + " ".join(argv), "steps": args.steps, "runs": rows}
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
