"""Teacher health study: train named teacher variants on the same data, seeds and budget with
`distill.py stage=teacher` and tabulate their health figures (teachers/health.py) and held-out
accuracy. Each variant is a list of config overrides; a finished run is never re-run.

    python -m experiments.teacher_health --out experiments/results/teacher_health.json \
        [--variants before after] [--seeds 0 1 2] [--jobs 2] [--set train.teacher_epochs=10]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# The project's teacher before the health work (its old defaults spelled out) and the options since;
# every variant trains 30 teacher epochs in all, as configs/default.yaml does.
ONE_PHASE = ["train.teacher_ssl_epochs=0", "train.teacher_epochs=30"]
# codes from a head on the token, as the official model (the default until section 4 of teacher_health.md)
TOKEN_CODES = ["teacher.vqshape.code_input=token", "teacher.vqshape.span_init=none",
               "teacher.vqshape.decoder_input=tokens"]
BEFORE = ["teacher.vqshape.pos_init_std=0.02", "teacher.vqshape.decoder_cls_token=false",
          "teacher.vqshape.loss_scale=input", "teacher.vqshape.head_detach=false",
          "teacher.vqshape.lambda_shape_norm=0", *ONE_PHASE, *TOKEN_CODES]
VARIANTS = {
    "before": BEFORE,
    "pos": ["teacher.vqshape.pos_init_std=1.0", *BEFORE[1:]],
    "pos+scale+cls": ["teacher.vqshape.head_detach=false", "teacher.vqshape.lambda_shape_norm=0", *ONE_PHASE,
                      *TOKEN_CODES],
    "+detach": ["teacher.vqshape.lambda_shape_norm=0", *ONE_PHASE, *TOKEN_CODES],
    "+detach+shape": [*ONE_PHASE, *TOKEN_CODES],
    "after": [],                                         # configs/default.yaml as it stands
    "after-signal": ["teacher.text_guidance=false"],
    "token-codes": TOKEN_CODES,                          # section 2's default
    "token-codes-signal": [*TOKEN_CODES, "teacher.text_guidance=false"],
    # a head over the (detached) tokenizer outputs instead of the attribute numbers
    "tokhead": ["teacher.vqshape.head_input=tokens"],
    "tokhead-signal": ["teacher.vqshape.head_input=tokens", "teacher.text_guidance=false"],
    # output patches read every token whose span overlaps them, weighted by the overlap (section 5)
    "span_overlap": ["teacher.vqshape.decoder_input=span_overlap"],
}
KEYS = ("distinct_shapes", "codes_used", "perplexity", "span_coverage", "span_t_std", "span_l_std",
        "shape_fit_r2", "recon_r2")


def run_one(name: str, seed: int, overrides, root: Path, config: str) -> dict:
    run_dir = root / f"{name}_s{seed}"
    res = run_dir / "results.json"
    if not res.is_file():
        cmd = [sys.executable, "distill.py", "--config", config, "stage=teacher", f"run_dir={run_dir}",
               f"seed={seed}", "overwrite=true", *overrides]
        with open(root / f"{name}_s{seed}.log", "w") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, env=os.environ)
    t = json.loads(res.read_text())["teacher"]
    return {"variant": name, "seed": seed, "accuracy": t["accuracy"], "macro_f1": t["macro_f1"],
            "train_wall_s": t.get("train_wall_s"), **{k: t["health"][k] for k in KEYS}}


def table(rows) -> str:
    head = "| variant | seed | " + " | ".join(KEYS) + " | acc | macro-F1 | train s |"
    lines = [head, "|" + "---|" * (len(KEYS) + 5)]
    for r in rows:
        vals = [f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in KEYS]
        lines.append(f"| {r['variant']} | {r['seed']} | " + " | ".join(vals)
                     + f" | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | {r['train_wall_s'] or 0:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--set", nargs="*", default=[], help="overrides for every variant (e.g. data.name=synthetic)")
    ap.add_argument("--root", default="runs/teacher_health")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel; CPU threads are split between them")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    jobs = [(v, s, VARIANTS[v] + args.set + [f"train.num_threads={threads}"]) for v in args.variants for s in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda j: run_one(*j, root, args.config), jobs))
    print(table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps({"config": args.config, "set": args.set, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
