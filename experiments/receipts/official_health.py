"""Teacher health of the official VQShape model code next to this project's VQShape, trained the
same way on the same watch windows: the official code's own pretraining losses (x, vq, s, 0.8 div)
and this project's self-supervised terms, the same series (every channel of a training window is a
series, z-normalised as the official data loader does), batches, AdamW, warmup-cosine schedule and
number of steps; both scored on the held-out windows with teachers/health.py.

The official code is not part of this project: check out github:YunshiWen/VQShape and point
--official at the checkout (it needs `pip install einops`):

    python -m experiments.receipts.official_health --official /path/to/VQShape [--steps 570] [--variants ...]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from kd.config import VQShapeConfig, load_config
from kd.data import build_splits
from kd.engine import warmup_cosine
from teachers.health import health_figures
from kd.vqshape import VQShape, extract_subsequence

SIZE = dict(dim=64, enc_layers=2, enc_heads=4, tok_layers=2, tok_heads=4, dec_layers=1, dec_heads=4)  # default teacher
OURS = {  # name: VQShapeConfig overrides (self-supervised terms only)
    "ours-before": dict(pos_init_std=0.02, decoder_cls_token=False, loss_scale="input"),
    "ours-after": dict(),
    "ours-after+shape": dict(lambda_shape_norm=1.0),
}


def series(ds) -> torch.Tensor:
    """Every channel of every window as one z-normalised series (N*C, T)."""
    x = torch.stack([ds[i]["x"] for i in range(len(ds))]).flatten(0, 1)
    return (x - x.mean(-1, keepdim=True)) / (x.var(-1, keepdim=True) + 1e-5).sqrt()


class Official:
    def __init__(self, module, num_token: int, len_s: int):
        c = SIZE
        self.model = module.VQShape(
            dim_embedding=c["dim"], patch_size=8, num_patch=64, num_enc_head=c["enc_heads"],
            num_enc_layer=c["enc_layers"], num_tokenizer_head=c["tok_heads"], num_tokenizer_layer=c["tok_layers"],
            num_dec_head=c["dec_heads"], num_dec_layer=c["dec_layers"], num_token=num_token, len_s=len_s,
            len_input=512, s_smooth_factor=1, num_code=512, dim_code=8, lambda_commit=0.25, lambda_entropy=0.1,
            entropy_gamma=1.0, mask_ratio=0.25)

    def loss(self, x):
        _, d = self.model(x, mode="pretrain")
        return d["ts_loss"] + d["vq_loss"] + d["shape_loss"] + 0.8 * d["dist_loss"]

    @torch.no_grad()
    def outputs(self, x):
        o, _ = self.model.evaluate(x)
        return {"t": o["t_pred"][..., 0], "l": o["l_pred"][..., 0], "code_idx": o["code_idx"], "s_hat": o["s_pred"],
                "target": o["s_true"], "x_hat": o["x_pred"], "x": x}

    def shapes(self, idx):
        return self.model.shape_decoder(self.model.codebook.embedding.weight[idx])[0]


class Ours:
    def __init__(self, overrides: dict):
        self.model = VQShape(VQShapeConfig(**SIZE, lambda_ce=0.0, **overrides), num_channels=1, num_classes=2)

    def loss(self, x):
        out = self.model(x[:, None, :])
        terms = {k: v for k, v in self.model.losses(out, torch.zeros(len(x), dtype=torch.long)).items() if k != "ce"}
        self.last_terms = {k: round(float(v), 3) for k, v in terms.items()}
        return sum(terms.values())

    @torch.no_grad()
    def outputs(self, x):
        o = self.model(x[:, None, :])
        t, l = o["t"], o["l"]
        return {"t": t[..., 0], "l": l[..., 0], "code_idx": o["code_idx"], "s_hat": o["s_hat"],
                "target": extract_subsequence(o["x"], t, l, o["s_hat"].shape[-1]), "x_hat": o["x_hat"], "x": o["x"]}

    def shapes(self, idx):
        return self.model.shape_decoder.decode(self.model.codebook.weight[idx])


@torch.no_grad()
def health(runner, test: torch.Tensor, num_code: int = 512) -> dict:
    runner.model.eval()
    parts = [runner.outputs(test[i:i + 256]) for i in range(0, len(test), 256)]
    o = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    report = health_figures(o, runner.shapes, num_code)
    runner.model.train()
    return report


def train(runner, train_x, steps: int, batch: int, lr: float, seed: int, log_every: int = 0) -> float:
    """Same loop for both: AdamW (wd 0.01), warmup 50 + cosine to 0.05 lr, clip 1. Returns the last loss."""
    params = [p for p in runner.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = warmup_cosine(opt, min(50, max(1, steps // 10)), steps, 0.05)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train_x), generator=g)
    runner.model.train()
    for step in range(steps):
        if (step + 1) * batch > len(order):
            order = torch.cat([order, torch.randperm(len(train_x), generator=g)])
        loss = runner.loss(train_x[order[step * batch:(step + 1) * batch]])
        if log_every and step % log_every == 0:
            print(f"  step {step}: loss {float(loss):.3f} {getattr(runner, 'last_terms', '')}", flush=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
    return float(loss)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", required=True, help="a checkout of github:YunshiWen/VQShape")
    ap.add_argument("--variants", nargs="+", default=["official", *OURS], choices=["official", *OURS])
    ap.add_argument("--steps", type=int, default=570, help="the default teacher's budget: 30 epochs x 19 steps")
    ap.add_argument("--batch", type=int, default=192, help="series per step: 32 windows x 6 channels")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log-every", type=int, default=0, help="print the training loss every N steps")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sys.path.insert(0, args.official)
    import vqshape.model as official_module
    splits = build_splits(load_config("configs/default.yaml").data)
    train_x, test_x = series(splits.train), series(splits.test)
    rows = []
    for seed in args.seeds:
        for name in args.variants:
            torch.manual_seed(seed)
            runner = Official(official_module, 32, 128) if name == "official" else Ours(OURS[name])
            t0 = time.time()
            last = train(runner, train_x, args.steps, args.batch, args.lr, seed, args.log_every)
            row = {"variant": name, "seed": seed, "steps": args.steps, "train_s": round(time.time() - t0, 1),
                   "last_loss": last, **health(runner, test_x)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
