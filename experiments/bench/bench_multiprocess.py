"""One vs two CPU processes (Accelerate, gloo) on the same training epochs of the default teacher.

Runs `accelerate launch [--multi_gpu --num_processes 2] distill.py stage=teacher` on watch for
--epochs epochs and reads the teacher's training wall time from results.json. With 2 processes
each takes half of every epoch's batches and (train.num_threads unset) uses
CPUs / processes threads.

    python -m experiments.bench.bench_multiprocess [--epochs 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]


def run(n: int, epochs: int, tmp: str) -> dict:
    run_dir = f"{tmp}/p{n}"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", "--num_processes", str(n), *(["--multi_gpu"] if n > 1 else []),
              "distill.py", "stage=teacher", f"run_dir={run_dir}", f"train.teacher_epochs={epochs}"]
    subprocess.run(launch, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=True, capture_output=True)
    r = json.loads(Path(run_dir, "results.json").read_text())
    return {"processes": r["num_processes"], "train_s": r["teacher"]["train"]["wall_s"],
            "steps_per_process": r["teacher"]["train"]["steps"], "accuracy": r["teacher"]["accuracy"]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()
    print(f"machine: {psutil.cpu_count(logical=False)} physical / {psutil.cpu_count()} logical cores; "
          f"default teacher on watch, {args.epochs} epochs")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(n, args.epochs, tmp) for n in (1, 2)]
    for r in rows:
        print(f"  {r['processes']} process(es): {r['train_s']:6.1f} s for {args.epochs} epochs "
              f"({r['steps_per_process']} optimizer steps per process), test accuracy {r['accuracy']:.3f}")
    print(f"  speed-up of 2 processes: {rows[0]['train_s'] / rows[1]['train_s']:.2f}x")


if __name__ == "__main__":
    main()
