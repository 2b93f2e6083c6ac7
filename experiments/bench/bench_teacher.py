"""Teacher training-step throughput: this project's VQShape vs the official VQShape model code.

Both models are built at the same configuration, fed the same batch of univariate series
(B, 512) and trained with the same loss (x + vq + s + 0.8 div) and AdamW, in this one
process; their steps are interleaved (A, B, A, B, ...) so drift hits both alike. Also the
extra cost of text fusion (MMVQShape vs VQShape) on 6-channel windows.

The official code is not part of this project: check it out and point --official at it,
e.g. the `vqshape/` package of github:YunshiWen/VQShape (needs `pip install einops`):

    python -m experiments.bench.bench_teacher --official /path/to/VQShape [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from kd.config import FusionConfig, VQShapeConfig
from teachers.mmvqshape import MMVQShape
from kd.vqshape import VQShape

CONFIGS_ALL = {  # name: (dim, enc/tok layers, dec layers, heads, len_s)
    "d256": (256, 4, 2, 8, 128),
    "d128": (128, 2, 2, 8, 64),
}
CONFIGS = CONFIGS_ALL


def ours(dim, layers, dec_layers, heads, len_s, dedup=True):
    cfg = VQShapeConfig(dim=dim, enc_layers=layers, enc_heads=heads, tok_layers=layers, tok_heads=heads,
                        dec_layers=dec_layers, dec_heads=heads, len_s=len_s, lambda_ce=0.0,
                        dedup_shape_decoder=dedup)
    return VQShape(cfg, num_channels=1, num_classes=2)


def official(module, dim, layers, dec_layers, heads, len_s):
    return module.VQShape(dim_embedding=dim, patch_size=8, num_patch=64, num_enc_head=heads, num_enc_layer=layers,
                          num_tokenizer_head=heads, num_tokenizer_layer=layers, num_dec_head=heads,
                          num_dec_layer=dec_layers, num_token=32, len_s=len_s, len_input=512, s_smooth_factor=1,
                          num_code=512, dim_code=8, lambda_commit=0.25, lambda_entropy=0.1, entropy_gamma=1.0,
                          mask_ratio=0.25)


def step_ours(model, opt, x):
    out = model(x[:, None, :])
    loss = sum(model.losses(out, torch.zeros(len(x), dtype=torch.long)).values())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def step_official(model, opt, x):
    _, d = model(x, mode="pretrain")
    loss = d["ts_loss"] + d["vq_loss"] + d["shape_loss"] + 0.8 * d["dist_loss"]
    opt.zero_grad(set_to_none=True)
    loss.sum().backward()
    opt.step()


@torch.no_grad()
def spread_codes(model, x, official_model: bool):
    """Data-dependent codebook init (codes = samples of the model's own z_e): many codes in use,
    as after training, instead of the few an untrained model picks."""
    if official_model:
        model.x_mean, model.x_std = x.mean(-1, keepdim=True), (x.var(-1, keepdim=True) + 1e-5).sqrt()
        h = model.tokenizer(model.encoder((x - model.x_mean) / model.x_std))
        z, weight = model.attr_decoder.z_head(h).flatten(0, 1), model.codebook.embedding.weight
    else:
        z, weight = model(x[:, None, :], reconstruct=False)["z_e"].flatten(0, 1), model.codebook.weight
    weight.copy_(z[torch.randperm(len(z))[: len(weight)]] + 1e-3 * torch.randn_like(weight))


def codes_in_use(model, x, official_model: bool) -> int:
    with torch.no_grad():
        idx = model(x, mode="evaluate")[0]["code_idx"] if official_model else model(x[:, None, :])["code_idx"]
    return idx.unique().numel()


def interleaved(fns, batch, steps, warmup):
    """fns: {name: zero-arg step}; -> {name: [seconds per step]} measured round-robin."""
    times = {k: [] for k in fns}
    for i in range(warmup + steps):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            if i >= warmup:
                times[k].append(time.perf_counter() - t)
    return times


def report(times, batch, unit):
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"  {k:28s} {batch / v:8.1f} {unit}/s   (median of {len(times[k])} steps, {v * 1e3:.0f} ms/step)")
    return med


def bench_official(args, official_module):
    print(f"== signal-only VQShape training step, univariate series of 512, batch {args.batch}, "
          f"{torch.get_num_threads()} threads")
    configs = {k: v for k, v in CONFIGS.items() if k in args.configs.split(",")}
    for (name, (dim, layers, dec_layers, heads, len_s)), regime in [(c, r) for c in configs.items()
                                                                      for r in args.regimes.split(",")]:
        torch.manual_seed(0)
        x = torch.randn(args.batch, 512).cumsum(-1) * 0.1 + torch.randn(args.batch, 512)
        models = {"official": official(official_module, dim, layers, dec_layers, heads, len_s),
                  "ours": ours(dim, layers, dec_layers, heads, len_s),
                  "ours (no decode-once)": ours(dim, layers, dec_layers, heads, len_s, dedup=False)}
        if regime == "spread":
            for k, m in models.items():
                spread_codes(m, x, k == "official")
        used = {k: codes_in_use(m, x, k == "official") for k, m in models.items()}
        opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
        fns = {k: (lambda k=k: (step_official if k == "official" else step_ours)(models[k], opts[k], x)) for k in models}
        print(f"-- {name}, codes {regime}: dim {dim}, {layers}/{layers}/{dec_layers} layers, {heads} heads, "
              f"32 tokens, len_s {len_s}; distinct codes in the batch: official {used['official']}, ours {used['ours']}")
        med = report(interleaved(fns, args.batch, args.steps, args.warmup), args.batch, "series")
        print(f"  ratio ours/official = {med['official'] / med['ours']:.2f}x   "
              f"(without decode-once: {med['official'] / med['ours (no decode-once)']:.2f}x)")


def bench_fusion(args):
    C, n_cls, M, K = 6, 7, 40, 8
    print(f"== text fusion cost: 6-channel windows, batch {args.fusion_batch}, default small teacher (dim 64)")
    cfg = VQShapeConfig(dim=64, enc_layers=2, enc_heads=4, tok_layers=2, tok_heads=4, dec_layers=1, dec_heads=4)
    torch.manual_seed(0)
    text = {"vocab_emb": F.normalize(torch.randn(M, 384), dim=-1), "class_index": torch.randint(0, M, (n_cls, K)),
            "class_mask": torch.ones(n_cls, K, dtype=torch.bool), "label_emb": torch.randn(n_cls, 384)}
    models = {"signal-only": VQShape(cfg, C, n_cls), "text-guided": MMVQShape(cfg, FusionConfig(), C, n_cls, **text)}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    x, y = torch.randn(args.fusion_batch, C, 512), torch.randint(0, n_cls, (args.fusion_batch,))

    def step(k):
        m = models[k]
        loss = sum(m.losses(m.fit_forward({"x": x, "y": y}), y).values())
        opts[k].zero_grad(set_to_none=True)
        loss.backward()
        opts[k].step()

    med = report(interleaved({k: (lambda k=k: step(k)) for k in models}, args.fusion_batch, args.steps, args.warmup),
                 args.fusion_batch, "windows")
    print(f"  text fusion overhead = {100 * (med['text-guided'] / med['signal-only'] - 1):+.1f} %")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", help="directory holding the official `vqshape` package")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--fusion-batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--regimes", default="init,spread",
                   help="init: freshly initialised codebooks (few codes used); spread: codes drawn from z_e")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.official:
        sys.path.insert(0, args.official)
        import vqshape.model as official_module
        bench_official(args, official_module)
    else:
        print("(no --official given: skipping the comparison with the official VQShape code)")
    bench_fusion(args)


if __name__ == "__main__":
    main()
