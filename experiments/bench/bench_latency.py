"""Single-window CPU inference latency (1 thread) and parameter counts: students vs the teacher.

Models are built at the default pairing's sizes (configs/default.yaml) for watch windows
(6 x 512, 7 classes). Each model is timed eagerly (its `predict`, or the student + workspace
read-out as `kd.predict.Predictor(fused=False)` runs it) and, for CNN students, in the fused
inference form (`students.fused.FusedCNN`, what `Predictor` runs by default). Timing: under
torch.inference_mode with torch.set_num_threads(1), after warm-up, --rounds rounds that visit
every model in turn, each taking the median of --runs // --rounds calls; the latency printed is
the median over rounds, so slow drift of the machine hits every model alike.

    python -m experiments.bench.bench_latency [--runs 600] [--rounds 6]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from kd.config import load_config
from kd.workspace import Workspace
from students import build_student
from students.fused import FusedCNN
from teachers import build_teacher
from kd.layers import param_count

C, N_CLS, M, K = 6, 7, 38, 8


def build_models(cfg):
    """name -> (params, eager callable, fused callable or None)."""
    torch.manual_seed(0)
    text = {"vocab_emb": F.normalize(torch.randn(M, 384), dim=-1), "class_index": torch.randint(0, M, (N_CLS, K)),
            "class_mask": torch.ones(N_CLS, K, dtype=torch.bool), "label_emb": torch.randn(N_CLS, 384)}
    teacher = build_teacher(cfg.teacher, C, N_CLS, text).eval()
    models = {"teacher (text-guided VQShape, default)": (param_count(teacher), teacher.predict, None)}

    def cnn(name, arch, **cnn_over):
        ccfg = cfg.student.cnn.copy()
        for k, v in cnn_over.items():
            setattr(ccfg, k, v)
        s = build_student(arch, ccfg, cfg.student.vqshape, C, N_CLS, M).eval()
        models[name] = (param_count(s), s.predict, FusedCNN(s))
        return s

    stem = cfg.student.cnn.wrn_stem_stride
    s = cnn(f"wrn16_1 (default: wrn_stem_stride={stem})", "wrn16_1")
    ws = Workspace(cfg.kd.workspace, [("shape", 192, 8), ("action", 192, 64)], s.feature_dim,
                   s.feature_length(512)).eval()
    models["  + read-out (the default student as deployed)"] = (
        param_count(s) + ws.readout_param_count(), lambda x: s(x, mix=lambda f: ws(f, None)[0]).logits,
        FusedCNN(s, ws.prior_readout()))
    cnn("wrn16_1, wrn_stem_stride=1 (the paper's stem)", "wrn16_1", wrn_stem_stride=1)
    cnn("wrn16_1, wrn_stem_stride=1, kernel_size=3", "wrn16_1", wrn_stem_stride=1, kernel_size=3)
    cnn(f"wrn16_3 (wrn_stem_stride={stem})", "wrn16_3")
    cnn("resnet", "resnet")
    v = build_student("vqshape_student", cfg.student.cnn, cfg.student.vqshape, C, N_CLS, M).eval()
    models["vqshape_student"] = (param_count(v), v.predict, None)
    return models


def time_all(fns, x, runs: int, rounds: int):
    """fns: {key: callable} -> {key: median ms} (median over rounds of per-round medians)."""
    per = max(runs // rounds, 1)
    rec = {k: [] for k in fns}
    with torch.inference_mode():
        for fn in fns.values():
            for _ in range(20):
                fn(x)
        for _ in range(rounds):
            for k, fn in fns.items():
                ts = []
                for _ in range(per):
                    t = time.perf_counter()
                    fn(x)
                    ts.append(time.perf_counter() - t)
                rec[k].append(statistics.median(ts))
    return {k: statistics.median(v) * 1e3 for k, v in rec.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=600)
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args()
    torch.set_num_threads(1)
    models = build_models(load_config("configs/default.yaml"))
    x = torch.randn(1, C, 512)
    fns = {}
    for name, (_, eager, fused) in models.items():
        fns[(name, "eager")] = eager
        if fused is not None:
            fns[(name, "fused")] = fused
    ms = time_all(fns, x, args.runs, args.rounds)
    t_ms = ms[("teacher (text-guided VQShape, default)", "eager")]
    print(f"single window 6x512, 1 thread, {args.rounds} rounds x {args.runs // args.rounds} calls, "
          f"torch {torch.__version__}")
    print(f"  {'model':52s} {'params':>8s} {'eager':>9s} {'fused':>9s}  teacher/eager  teacher/fused")
    for name, (n, _, fused) in models.items():
        e, f = ms[(name, "eager")], ms.get((name, "fused"))
        fused_txt = f"{f:6.3f} ms" if f is not None else f"{'-':>9s}"
        ratio_f = f"{t_ms / f:12.1f}x" if f is not None else f"{'-':>13s}"
        print(f"  {name:52s} {n / 1e6:6.3f} M {e:6.3f} ms {fused_txt} {t_ms / e:13.1f}x {ratio_f}")


if __name__ == "__main__":
    main()
