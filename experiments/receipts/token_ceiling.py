"""How much of a window's class a trained VQShape teacher's tokens can tell, whatever head reads them.

The teacher's head (`vqshape.head_arch: conv`, detached) reads each token's attributes (shape code z_q, mean,
std, start, length). This asks whether a better reader of the same frozen teacher would be a better teacher:
the convolutional head (kd.vqshape.TokenHead, trained as in experiments/receipts/head_probe.py: 30 epochs, the epoch
chosen on the validation subject, seeds 0 and 1) on other per-token inputs of the same forward pass, each
channel's tokens in span order, and with two ways of training it on more varied windows:

  attributes   z_q, mu, sigma, t, l (the teacher's own head input)
  pre-quant    the same with z_e, the code before quantization
  latent       h, the tokenizer's output (dim numbers per token) that the attribute heads read
  fused        h + its attention over the sub-action vocabulary (text-guided teachers only)
  attr+latent  attributes and latent side by side
  attributes, mixup        windows mixed in token space (lam ~ Beta(1, 1)), the loss mixed likewise
  attributes, roll         each window's token sequence shifted circularly by a random number of positions

    python -m experiments.receipts.token_ceiling runs/cv/default_select/teachers/vqshape_310402b4/fold{0,1,2,3,4} \
        --out experiments/results/token_ceiling.json
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import torch
from torch.utils.data import DataLoader

from experiments.receipts.head_probe import SEEDS, fit
from experiments.run_reports import main_over_runs
from kd.evaluate import load_run_teacher
from kd.vqshape import TokenHead, in_span_order

# name -> (per-token inputs concatenated, head training options)
VARIANTS = {
    "attributes": (("tokens",), {}),
    "pre-quant": (("pre_quant",), {}),
    "latent": (("h",), {}),
    "fused": (("h_fused",), {}),
    "attr+latent": (("tokens", "h"), {}),
    "attributes, mixup": (("tokens",), {"mix_alpha": 1.0}),
    "attributes, roll": (("tokens",), {"roll": True}),
}


@torch.no_grad()
def inputs_of(teacher, dataset) -> Dict[str, torch.Tensor]:
    """Every per-token input (S, C*N, k) in span order, channel mean and std (S, C), labels (S,)."""
    parts: Dict[str, list] = {}
    for batch in DataLoader(dataset, batch_size=64):
        out = teacher(batch["x"], keys="vocab", reconstruct=False)
        B = len(batch["y"])
        out["pre_quant"] = torch.cat([out["z_e"], out["mu"], out["sigma"], out["t"], out["l"]], dim=-1)
        row = {k: in_span_order(out[k], out["t"], out["l"]).reshape(B, -1, out[k].shape[-1])
               for k in ("tokens", "pre_quant", "h", "h_fused") if k in out}
        row.update(mean=out["mean"].view(B, -1), std=out["std"].view(B, -1), y=batch["y"])
        for k, v in row.items():
            parts.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in parts.items()}


def report(run_dir: Path) -> Dict:
    teacher, _, cfg, splits = load_run_teacher(run_dir)
    teacher.eval()
    sets = [inputs_of(teacher, s) for s in (splits.train, splits.val, splits.test)]
    n_cls, C, v = len(splits.class_names), splits.num_channels, cfg.teacher.vqshape
    row = {"run": str(run_dir),
           "teacher_macro_f1": json.loads((run_dir / "results.json").read_text())["teacher"]["macro_f1"]}
    for name, (keys, options) in VARIANTS.items():
        if any(k not in sets[0] for k in keys):
            continue                                         # "fused" on a signal-only teacher
        data = [(torch.cat([s[k] for k in keys], dim=-1), s["mean"], s["std"], s["y"]) for s in sets]
        fits = [fit(TokenHead(C, v.num_token, data[0][0].shape[-1], n_cls, v.head_hidden, v.head_channel_stats,
                              v.dropout, arch="conv"), *data, n_cls, seed, **options) for seed in SEEDS]
        row[name] = {"fits": fits, "val_macro_f1": sum(f["val_macro_f1"] for f in fits) / len(fits),
                     "test_macro_f1": sum(f["test_macro_f1"] for f in fits) / len(fits)}
    return row


if __name__ == "__main__":
    main_over_runs(__doc__, report)
