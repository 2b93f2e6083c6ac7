"""Token adapter: a bridge from a student's features to the teacher's token grid.

A CNN has no shape tokens, so attribute-level KD needs a bridge: `TokenAdapter` reads the
CNN's last feature map [B, D, L] with G learned queries (one per teacher token, G = C*N)
and emits VQShape's attribute parameterisation (z_e, t, l, mu, sigma) on that grid.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

from kd.layers import Attention, FeedForward, check_rank, neighbour_context
from kd.vqshape import VQShape, AttributeHeads


class TokenAdapter(nn.Module):
    """CNN features [B, D, L] -> G attribute tokens, as the VQShape teacher parameterises them.

    Keys/values: Linear D->dim + learned positions over `length` steps (linearly resampled
    when the features have another length, e.g. windows longer than the training ones).
    Queries: G learned tokens. One post-norm cross-attention + feed-forward block, then the
    teacher's `AttributeHeads` (t in [0, 1 - 1/64], l in [1/64, 1 - t + 1/64]).
    """

    def __init__(self, feature_dim: int, num_tokens: int, dim_code: int, dim: int, heads: int, length: int):
        super().__init__()
        self.feature_dim, self.dim, self.num_tokens, self.dim_code = feature_dim, dim, num_tokens, dim_code
        self.proj = nn.Linear(feature_dim, dim)
        self.pos = nn.Parameter(torch.randn(length, dim) * 0.02)
        self.ctx_norm = nn.LayerNorm(dim)
        self.queries = nn.Parameter(torch.randn(num_tokens, dim) * 0.02)
        self.attn = Attention(dim, heads)
        self.ff = FeedForward(dim, dropout=0.0)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attr = AttributeHeads(dim, dim_code, min_len=VQShape.min_len)

    def positions(self, L: int) -> torch.Tensor:
        if L == self.pos.shape[0]:
            return self.pos
        return F.interpolate(self.pos.t()[None], size=L, mode="linear", align_corners=False)[0].t()  # (L, dim)

    def forward(self, features: torch.Tensor) -> Dict[str, torch.Tensor]:
        """features (B, D, L) -> tokens (B, G, dim), z_e (B, G, dc), t, l, mu, sigma (B, G, 1)."""
        check_rank(features, [None, self.feature_dim, None], name="features")
        B, _, L = features.shape
        ctx = self.ctx_norm(self.proj(features.transpose(1, 2)) + self.positions(L))  # (B, L, dim)
        q = self.queries.expand(B, -1, -1)                                             # (B, G, dim)
        h = self.norm1(q + self.attn(q, ctx))
        h = self.norm2(h + self.ff(h))
        return {"tokens": h, **self.attr(h)}


class SubActionHead(nn.Module):
    """Adapter tokens (B, C*N, d), channel-major as the teacher's grid -> sub-action scores (B, C*N, M).

    context 0: a linear map of each token alone. context k > 0: what an ordered-alignment teacher's
    window scores read (METHOD.md §4) — every channel's tokens at the token's time position and the k
    positions either side (zeros past the window's ends), one linear map per time position, so the C
    tokens of one position get the same scores, as the teacher's do.
    """

    def __init__(self, dim: int, num_actions: int, channels: int, context: int = 0):
        super().__init__()
        if context < 0:
            raise ValueError(f"sub-action head context={context} must be >= 0")
        self.channels, self.context = channels, context
        self.linear = nn.Linear(dim if context == 0 else (2 * context + 1) * channels * dim, num_actions)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.context == 0:
            return self.linear(tokens)
        B, G, d = tokens.shape
        C, k = self.channels, self.context
        if G % C:
            raise ValueError(f"{G} tokens do not split into {C} channels")
        N = G // C
        per_pos = tokens.view(B, C, N, d).transpose(1, 2).reshape(B, N, C * d)       # (B, N, C*d)
        scores = self.linear(neighbour_context(per_pos, k))                           # (B, N, M)
        return scores[:, None].expand(B, C, N, scores.shape[-1]).reshape(B, G, -1)
