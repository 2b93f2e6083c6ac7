"""Single-window CPU inference latency (1 thread) and parameter counts: students vs the teacher.

Models are built at the default pairing's sizes (configs/default.yaml) for watch windows
(6 x 512, 7 classes); latency is the median of --runs calls of `predict` on one window under
torch.inference_mode after warm-up, with torch.set_num_threads(1).

    python experiments/bench_latency.py [--runs 200]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kd.config import load_config  # noqa: E402
from students import build_student  # noqa: E402
from teachers import build_teacher  # noqa: E402
from teachers.layers import param_count  # noqa: E402

C, N_CLS, M, K = 6, 7, 38, 8


def latency_ms(fn, x, runs: int) -> float:
    with torch.inference_mode():
        for _ in range(20):
            fn(x)
        ts = []
        for _ in range(runs):
            t = time.perf_counter()
            fn(x)
            ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=200)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = load_config("configs/default.yaml")
    text = {"vocab_emb": F.normalize(torch.randn(M, 384), dim=-1), "class_index": torch.randint(0, M, (N_CLS, K)),
            "class_mask": torch.ones(N_CLS, K, dtype=torch.bool), "label_emb": torch.randn(N_CLS, 384)}
    teacher = build_teacher(cfg.teacher, C, N_CLS, text).eval()
    models = {"teacher (text-guided VQShape, default)": (teacher, teacher.predict)}
    for arch in ("wrn16_1", "wrn16_3", "resnet", "vqshape_student"):
        s = build_student(arch, cfg.student.cnn, cfg.student.vqshape, C, N_CLS, M).eval()
        models[arch] = (s, s.predict)
    k3 = cfg.student.cnn.copy()
    k3.kernel_size = 3
    s = build_student("wrn16_1", k3, cfg.student.vqshape, C, N_CLS, M).eval()
    models["wrn16_1 (kernel 3)"] = (s, s.predict)
    x = torch.randn(1, C, 512)
    print(f"single window 6x512, 1 thread, median of {args.runs} runs")
    t_ms = latency_ms(models["teacher (text-guided VQShape, default)"][1], x, args.runs)
    for name, (m, fn) in models.items():
        ms = t_ms if name.startswith("teacher") else latency_ms(fn, x, args.runs)
        print(f"  {name:40s} {param_count(m) / 1e6:6.3f} M params  {ms:7.2f} ms  teacher/model = {t_ms / ms:5.1f}x")


if __name__ == "__main__":
    main()
