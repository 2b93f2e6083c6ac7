"""The study behind experiments/RESULTS.md: every number there comes from a run directory this
script makes with `distill.py` (one process each; `--dry-run` prints the commands).

    python -m experiments.run_study [--seeds 0,1,2] [--root runs/study] [--only watch|synthetic]

watch (held-out subjects 9-10), per seed:
  teacher_text / teacher_signal     text-guided vs signal-only VQShape teacher (stage=teacher)
  wrn_none                          WRN-16-1, no teacher
  wrn_logit                         + logit KD from the text-guided teacher
  wrn_tokens                        + attribute, code-KL and action-KL losses (fixed weights)
  wrn_ws_fixed                      + mGLW workspace, fixed source weights
  wrn_ws_dynamic                    + mGLW workspace, dynamic coefficients (= configs/default.yaml)
  wrn_signal_teacher                the full loss set from the signal-only teacher (shape source only)
  vqs_full                          small VQShape student, full loss set (configs/text_teacher_vqshape_student.yaml)
  wrn_ws_prior05                    wrn_ws_dynamic with half of the training steps on the slot prior (the
                                    inference path) instead of 20 %
synthetic (ground-truth sub-actions), per seed: a text-guided teacher, then WRN-16-1 and the VQShape
student with the full loss set; results.json holds their sub-action recovery.
Students reuse their seed's teacher checkpoint (teacher.checkpoint=...), so the teacher is trained once.
--wrn-stem-stride (default 1) is passed to every run as student.cnn.wrn_stem_stride: 1 reproduces
the recorded study (RESULTS.md §1-3, run with the paper's stem); the WRN-16-1 pairings now default
to 2 (RESULTS.md §2b).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

NO_TOKENS = ["kd.attr.weight=0", "kd.code_kl.weight=0", "kd.action_kl.weight=0"]
NO_WS = ["kd.workspace.enabled=false", "kd.coef=fixed"]
SHAPE_ONLY = ["kd.sources=[{name: shape, tokens: shape_tokens}]", "kd.action_kl.weight=0"]


def watch_runs(root: Path, seed: int):
    d = lambda name: f"run_dir={root}/watch/{name}_s{seed}"  # noqa: E731
    text_t = f"teacher.checkpoint={root}/watch/teacher_text_s{seed}/teacher"
    signal_t = f"teacher.checkpoint={root}/watch/teacher_signal_s{seed}/teacher"
    common = [f"seed={seed}", "train.baseline=false"]
    return [
        ("teacher_text", ["--config", "configs/default.yaml", d("teacher_text"), "stage=teacher", *common]),
        ("teacher_signal", ["--config", "configs/signal_teacher_wrn16_1.yaml", d("teacher_signal"), "stage=teacher",
                            *common]),
        ("wrn_none", ["--config", "configs/baseline_wrn16_1.yaml", d("wrn_none"), f"seed={seed}"]),
        ("wrn_logit", ["--config", "configs/default.yaml", d("wrn_logit"), text_t, *common, *NO_TOKENS, *NO_WS]),
        ("wrn_tokens", ["--config", "configs/default.yaml", d("wrn_tokens"), text_t, *common, *NO_WS]),
        ("wrn_ws_fixed", ["--config", "configs/default.yaml", d("wrn_ws_fixed"), text_t, *common, "kd.coef=fixed",
                          "kd.sources=[{name: shape, tokens: shape_tokens, fixed_weight: 0.5}, "
                          "{name: action, tokens: action_tokens, fixed_weight: 0.5}]"]),
        ("wrn_ws_dynamic", ["--config", "configs/default.yaml", d("wrn_ws_dynamic"), text_t, *common]),
        ("wrn_signal_teacher", ["--config", "configs/signal_teacher_wrn16_1.yaml", d("wrn_signal_teacher"),
                                signal_t, *common]),
        ("vqs_full", ["--config", "configs/text_teacher_vqshape_student.yaml", d("vqs_full"), text_t, *common]),
        ("wrn_ws_prior05", ["--config", "configs/default.yaml", d("wrn_ws_prior05"), text_t, *common,
                            "kd.workspace.prior_prob=0.5"]),
    ]


def synthetic_runs(root: Path, seed: int):
    d = lambda name: f"run_dir={root}/synthetic/{name}_s{seed}"  # noqa: E731
    data = ["data.name=synthetic", "data.synthetic.num_windows=1500", f"seed={seed}"]
    teacher = f"teacher.checkpoint={root}/synthetic/teacher_s{seed}/teacher"
    return [
        ("syn_teacher", ["--config", "configs/default.yaml", d("teacher"), "stage=teacher", *data]),
        ("syn_wrn_full", ["--config", "configs/default.yaml", d("wrn_full"), teacher, *data]),
        ("syn_vqs_full", ["--config", "configs/text_teacher_vqshape_student.yaml", d("vqs_full"), teacher, *data,
                          "train.baseline=false"]),
    ]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--root", default="runs/study")
    p.add_argument("--only", choices=["watch", "synthetic"])
    p.add_argument("--wrn-stem-stride", type=int, default=1)
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args()
    root = Path(args.root)
    plan = []
    for seed in map(int, args.seeds.split(",")):
        if args.only in (None, "watch"):
            plan += watch_runs(root, seed)
        if args.only in (None, "synthetic"):
            plan += synthetic_runs(root, seed)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for name, cli in plan:
        cmd = [sys.executable, "distill.py", *cli, f"student.cnn.wrn_stem_stride={args.wrn_stem_stride}"]
        run_dir = Path(next(a.split("=", 1)[1] for a in cli if a.startswith("run_dir=")))
        if args.dry_run:
            print(" ".join(repr(c) if " " in c else c for c in cmd[1:]))
            continue
        if (run_dir / "results.json").is_file():
            print(f"[skip] {run_dir} (done)")
            continue
        t0 = time.time()
        log = run_dir.with_suffix(".log")
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as fh:
            subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, check=True)
        print(f"[done] {name:20s} {run_dir}  {time.time() - t0:6.0f} s", flush=True)


if __name__ == "__main__":
    main()
