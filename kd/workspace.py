"""mGLW-style global workspace: concept slots shared by the knowledge sources and the student.

METHOD.md §6 (`workspace`). Slot attention after Locatello et al. 2020
(https://arxiv.org/abs/2006.15055); the global-workspace idea after VanRullen & Kanai 2021
(https://arxiv.org/abs/2012.10390). Each knowledge source (teacher tokens) is projected to the
student's token count L and width D; K learnable slots attend to it (softmax over slots,
re-normalised over tokens, weighted mean of values, GRU update), the per-source slot updates
are averaged, and the student's features cross-attend to the slots and add the result back.

KIS_i = the slot-attention map of source i (softmax over slots, the *assignment* of each
token to slots, (B, L, S)); KTS = the student's cross-attention map (head mean, softmax over
slots, (B, L, S)). Both rows sum to 1 over slots, so their MSE compares like with like (the
design's KIS_i^T; the token-renormalised weights are used only for the weighted mean).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from kd.layers import Attention


def slot_attention_maps(k: torch.Tensor, q: torch.Tensor, eps: float = 1e-8):
    """k (B, L, D) token keys, q (B, S, D) slot queries ->
    assign (B, L, S): softmax over slots; weights (B, L, S): assign re-normalised over tokens."""
    logits = k @ q.transpose(1, 2) * k.shape[-1] ** -0.5                  # (B, L, S)
    assign = logits.float().softmax(dim=-1)                              # each token: distribution over slots
    weights = (assign + eps) / (assign + eps).sum(dim=1, keepdim=True)   # each slot: distribution over tokens
    return assign, weights


def dynamic_coefficients(distances: torch.Tensor) -> torch.Tensor:
    """c_i = d_i / sum_j d_j on detached distances: the source the student is farther from weighs more."""
    d = distances.detach().float()
    return d / d.sum().clamp(min=1e-12)


class SourceProjector(nn.Module):
    """Source tokens (B, n, d_src) -> (B, L, D): a linear map over the token axis and one over width."""

    def __init__(self, n_tokens: int, dim: int, length: int, width: int):
        super().__init__()
        self.tokens = nn.Linear(n_tokens, length)
        self.width = nn.Linear(dim, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, src: torch.Tensor) -> torch.Tensor:
        return self.norm(self.tokens(self.width(src).transpose(1, 2)).transpose(1, 2))


class Workspace(nn.Module):
    """Concept slots between knowledge sources and a student.

    sources: [(name, n_tokens, dim)] of the teacher outputs feeding the slots.
    width/length: the student's feature width D and token count L.
    """

    def __init__(self, cfg, sources: Sequence[Tuple[str, int, int]], width: int, length: int):
        super().__init__()
        S, D = cfg.num_slots, width
        # what rebuilds it from a checkpoint's meta.json: Workspace(cfg, **args)
        self.args = {"sources": [[n, k, d] for n, k, d in sources], "width": width, "length": length}
        self.iters, self.names = cfg.iters, [s[0] for s in sources]
        self.slot_prior = nn.Parameter(torch.randn(1, S, D) * D ** -0.5)
        self.project = nn.ModuleDict({n: SourceProjector(k, d, length, D) for n, k, d in sources})
        self.to_q, self.to_k, self.to_v = nn.Linear(D, D, bias=False), nn.Linear(D, D, bias=False), nn.Linear(D, D, bias=False)
        self.norm_slots, self.norm_mlp = nn.LayerNorm(D), nn.LayerNorm(D)
        self.gru = nn.GRUCell(D, D)
        self.mlp = nn.Sequential(nn.Linear(D, 2 * D), nn.ReLU(), nn.Linear(2 * D, D))
        self.student_norm = nn.LayerNorm(D)
        self.read = Attention(D, cfg.heads)                                  # student queries, slots as keys
        self.register_buffer("coef_ema", torch.full((len(sources),), 1.0 / max(len(sources), 1)))

    def update(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """One slot-attention step on one source -> new slots (B, S, D), assignment map (B, L, S)."""
        B, S, D = slots.shape
        q = self.to_q(self.norm_slots(slots))
        assign, weights = slot_attention_maps(k, q)
        updates = weights.transpose(1, 2).to(v.dtype) @ v                    # (B, S, D): weighted mean of values
        new = self.gru(updates.reshape(B * S, D), slots.reshape(B * S, D)).view(B, S, D)
        return new + self.mlp(self.norm_mlp(new)), assign

    def slots_from(self, sources: Dict[str, torch.Tensor]):
        """Run `iters` slot-attention rounds over every source -> slots (B, S, D), {name: KIS (B, L, S)}."""
        inputs = {n: self.project[n](sources[n]) for n in self.names}        # each (B, L, D)
        kv = {n: (self.to_k(t), self.to_v(t)) for n, t in inputs.items()}
        B = next(iter(inputs.values())).shape[0]
        slots = self.slot_prior.expand(B, -1, -1)
        for _ in range(self.iters):
            results = [self.update(slots, *kv[n]) for n in self.names]
            slots = torch.stack([r[0] for r in results]).mean(dim=0)         # sources averaged (beta = 1/n)
        return slots, {n: r[1] for n, r in zip(self.names, results)}

    def forward(self, feats: torch.Tensor, sources: Optional[Dict[str, torch.Tensor]] = None):
        """feats (B, D, L) student features -> (feats + read-out, info).

        sources None: signal-only path, the slots are the learned prior (inference).
        info: KTS (B, L, S) and, with sources, KIS {name: (B, L, S)}.
        """
        x = feats.transpose(1, 2)                                            # (B, L, D)
        if sources is None:
            slots, kis = self.slot_prior.expand(x.shape[0], -1, -1), {}
        else:
            slots, kis = self.slots_from(sources)
        read, kts = self.read.forward_with_weights(self.student_norm(x), slots)  # (B, L, D), (B, L, S)
        return (x + read).transpose(1, 2), {"kts": kts, "kis": kis}

    def readout_param_count(self) -> int:
        """Parameters the inference path uses: the slot prior, the student-side norm and the read
        attention (the source projectors, slot updates and GRU serve training only)."""
        return self.slot_prior.numel() + sum(p.numel() for m in (self.student_norm, self.read) for p in m.parameters())

    def prior_readout(self) -> "PriorReadout":
        """The inference path's read-out (slots = the learned prior) with its constants folded."""
        return PriorReadout(self)

    def alignment(self, info: Dict) -> Tuple[torch.Tensor, torch.Tensor]:
        """-> (L_align = sum_i MSE(KTS, KIS_i), distances d_i (S_src,) with gradient)."""
        d = torch.stack([F.mse_loss(info["kts"].float(), info["kis"][n].float()) for n in self.names])
        return d.sum(), d

    @torch.no_grad()
    def track_coefficients_(self, coef: torch.Tensor, momentum: float = 0.9) -> None:
        """EMA of the dynamic coefficients, used on prior-only steps (no source -> no distance)."""
        self.coef_ema.mul_(momentum).add_((1 - momentum) * coef.to(self.coef_ema.dtype))


def small_softmax(x: torch.Tensor) -> torch.Tensor:
    """softmax over the last dim, written out: on CPU, torch.softmax over a short last dim (the 8
    slots) is ~4x slower than these three ops (experiments/BENCHMARKS.md §2)."""
    e = (x - x.amax(dim=-1, keepdim=True)).exp_()
    return e.div_(e.sum(dim=-1, keepdim=True))


class PriorReadout(nn.Module):
    """tokens (B, L, D) -> tokens + read-out from the learned slot prior, in two matmuls.

    With constant slots, each head's keys K_h and values V_h (S, hd) are constants, so
        logits_h = (LN(x) W_q,h^T + b_q,h) K_h^T / sqrt(hd) = LN(x) A_h + c_h
        read     = sum_h softmax(logits_h) (V_h W_out,h^T) + b_out
    with A_h = W_q,h^T K_h^T / sqrt(hd) (D, S), c_h = b_q,h K_h^T / sqrt(hd) and V_h W_out,h^T
    (S, D) precomputed once. Equal to `Workspace.forward(feats, None)` within float rounding.
    """

    def __init__(self, ws: Workspace):
        super().__init__()
        attn, prior = ws.read, ws.slot_prior.detach()                        # prior (1, S, D)
        S, D = prior.shape[1:]
        h, hd = attn.heads, D // attn.heads
        with torch.no_grad():
            _, k, v = attn.project(prior, prior)                             # each (1, h, S, hd)
            wq, bq = attn.qkv.weight[:D].view(h, hd, D), attn.qkv.bias[:D].view(h, 1, hd)
            a = wq.transpose(1, 2) @ k[0].transpose(1, 2) * hd ** -0.5         # (h, D, S)
            c = bq @ k[0].transpose(1, 2) * hd ** -0.5                         # (h, 1, S)
            w_out = attn.out.weight.view(D, h, hd).permute(1, 2, 0)           # (h, hd, D)
            vo = v[0] @ w_out                                                 # (h, S, D)
        self.heads, self.slots = h, S
        self.norm = ws.student_norm
        self.register_buffer("logit_weight", a.permute(1, 0, 2).reshape(D, h * S).clone())
        self.register_buffer("logit_bias", c.reshape(h * S).clone())
        self.register_buffer("values", vo.reshape(h * S, D).clone())
        self.register_buffer("out_bias", attn.out.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        logits = torch.addmm(self.logit_bias, self.norm(x).reshape(B * L, D), self.logit_weight)
        attn = small_softmax(logits.view(B * L, self.heads, self.slots))     # per head, over slots
        read = torch.addmm(self.out_bias, attn.view(B * L, -1), self.values)  # (B*L, D)
        return x + read.view(B, L, D)
