"""What the E-step of a trained text-guided teacher (teacher.alignment.target=ordered) gives on held-out
windows: how peaked the chain posteriors are, whether they change along a window, and where the
label-free sub-action scores point. A posterior that is peaked but the same for every token of a
series means the chain explains each window with one sub-action.

    python -m experiments.receipts.alignment_diagnosis runs/syn_health_ordered_code_s0 [--windows 48]
"""
from __future__ import annotations

import argparse
import json
import math

import torch

from kd.config import load_config
from kd.data import build_splits
from kd.stages import load_teacher


def diagnose(run_dir: str, windows: int = 48) -> dict:
    cfg = load_config(f"{run_dir}/config.yaml")
    splits = build_splits(cfg.data)
    teacher, _ = load_teacher(f"{run_dir}/teacher", splits)
    step = max(1, len(splits.test) // windows)
    items = [splits.test[i] for i in range(0, len(splits.test), step)][:windows]
    x, y = torch.stack([it["x"] for it in items]), torch.stack([it["y"] for it in items])
    with torch.no_grad():
        out = teacher(x, y, keys="vocab", reconstruct=False)
        p = teacher.alignment_targets(out, y, ordered=True)                # (B*C, N, M), given the class
        s = out["sub_scores"].softmax(-1)
    k = teacher.class_mask[y.repeat_interleave(teacher.num_channels)].sum(1).float()
    entropy = -(p.clamp_min(1e-12).log() * p).sum(-1)
    return {
        "run_dir": run_dir, "series": int(p.shape[0]), "tokens_per_series": int(p.shape[1]),
        "posterior_entropy_over_log_k": float((entropy.mean(1) / k.log()).mean()),   # 1: flat over the class
        "posterior_max_mean": float(p.max(-1).values.mean()),
        "posterior_states_per_series": float(torch.tensor([len(set(r.tolist())) for r in p.argmax(-1)]).float().mean()),
        "posterior_change_per_token_tv": float((p[:, 1:] - p[:, :-1]).abs().sum(-1).mean() / 2),
        "scores_entropy_over_log_m": float((-(s.clamp_min(1e-12).log() * s).sum(-1)).mean() / math.log(s.shape[-1])),
        "scores_argmax_histogram": torch.bincount(s.argmax(-1).flatten(), minlength=s.shape[-1]).tolist(),
        "sub_prior": [round(v, 4) for v in teacher.sub_prior.tolist()],
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--windows", type=int, default=48)
    p.add_argument("--out")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = [diagnose(r, args.windows) for r in args.run_dirs]
    print(json.dumps(rows, indent=2))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=2)
    return {"runs": rows}


if __name__ == "__main__":
    main()
