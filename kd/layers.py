"""Small building blocks shared by teachers, students and the workspace (nothing here is model-specific).

The Transformer layers reproduce PyTorch's post-norm `nn.TransformerEncoderLayer` /
`nn.TransformerDecoderLayer` (GELU, 4x feed-forward, dropout), which the official VQShape
uses, but with a fused QKV projection and `F.scaled_dot_product_attention` in training too.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def exists(x) -> bool:
    return x is not None


def log(t: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """log that clamps first (as the official codebook entropy does)."""
    return t.clamp(min=eps).log()


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * log(p)).sum(dim=-1)


def neighbour_context(x: torch.Tensor, k: int) -> torch.Tensor:
    """(B, N, F) per position -> (B, N, (2k+1) F): each position's features beside those of the k positions
    before and after it, in time order (zeros past the sequence's ends)."""
    N = x.shape[1]
    padded = torch.nn.functional.pad(x, (0, 0, k, k))                                # (B, N + 2k, F)
    return torch.cat([padded[:, j:j + N] for j in range(2 * k + 1)], dim=-1)


class MLP(nn.Sequential):
    """Linear -> ReLU -> Linear (the official attribute heads)."""

    def __init__(self, dim_in: int, dim_out: int, hidden: int):
        super().__init__(nn.Linear(dim_in, hidden), nn.ReLU(), nn.Linear(hidden, dim_out))


class Dropout(nn.Module):
    """Inverted dropout, the same distribution as nn.Dropout: keep each element with probability
    1 - p and scale by 1 / (1 - p). The mask comes from `rand >= p`, which on CPU samples about
    1.7x faster than the Bernoulli kernel behind F.dropout (experiments/BENCHMARKS.md)."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p={p} must lie in [0, 1)")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return x * (torch.rand_like(x) >= self.p) * (1.0 / (1.0 - self.p))


class Attention(nn.Module):
    """Multi-head attention; `ctx=None` is self-attention (one fused QKV matmul)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention dim {dim} must be divisible by heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.attn_drop = Dropout(dropout)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        B, L, D = t.shape
        return t.view(B, L, self.heads, D // self.heads).transpose(1, 2)  # (B, h, L, hd)

    def project(self, x: torch.Tensor, ctx: Optional[torch.Tensor]):
        D = x.shape[-1]
        if ctx is None:
            q, k, v = self.qkv(x).split(D, dim=-1)
        else:  # same parameters, queries from x, keys/values from ctx
            w, b = self.qkv.weight, self.qkv.bias
            q = F.linear(x, w[:D], b[:D])
            k, v = F.linear(ctx, w[D:], b[D:]).split(D, dim=-1)
        return self._split(q), self._split(k), self._split(v)

    def forward(self, x: torch.Tensor, ctx: Optional[torch.Tensor] = None,
                key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, L, D), ctx (B, S, D), key_mask (B, S) True = attend."""
        if self.training and self.dropout > 0:
            # SDPA's own attention dropout samples its mask ~1.2x slower on CPU than the explicit
            # product with our Dropout (experiments/BENCHMARKS.md); the maths is the same.
            return self.forward_with_weights(x, ctx, key_mask)[0]
        q, k, v = self.project(x, ctx)
        mask = key_mask[:, None, None, :] if exists(key_mask) else None
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)        # (B, h, L, hd)
        return self.out(o.transpose(1, 2).flatten(2))

    def forward_with_weights(self, x, ctx=None, key_mask=None):
        """As forward, also returning the head-averaged attention map (B, L, S)."""
        q, k, v = self.project(x, ctx)
        logits = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5          # (B, h, L, S)
        if exists(key_mask):
            logits = logits.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        attn = logits.float().softmax(dim=-1).to(q.dtype)
        o = self.attn_drop(attn) @ v
        return self.out(o.transpose(1, 2).flatten(2)), attn.mean(dim=1)


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, dropout: float):
        super().__init__(nn.Linear(dim, 4 * dim), nn.GELU(), Dropout(dropout), nn.Linear(4 * dim, dim))


class EncoderLayer(nn.Module):
    """Post-norm self-attention block (= nn.TransformerEncoderLayer(gelu, norm_first=False))."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.attn = Attention(dim, heads, dropout)
        self.ff = FeedForward(dim, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.drop(self.attn(x)))
        return self.norm2(x + self.drop(self.ff(x)))


class DecoderLayer(nn.Module):
    """Post-norm self-attention + cross-attention block (= nn.TransformerDecoderLayer)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.self_attn = Attention(dim, heads, dropout)
        self.cross_attn = Attention(dim, heads, dropout)
        self.ff = FeedForward(dim, dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.drop(self.self_attn(x)))
        x = self.norm2(x + self.drop(self.cross_attn(x, memory)))
        return self.norm3(x + self.drop(self.ff(x)))


class Encoder(nn.ModuleList):
    def __init__(self, dim: int, heads: int, layers: int, dropout: float):
        super().__init__([EncoderLayer(dim, heads, dropout) for _ in range(layers)])

    def forward(self, x):
        for layer in self:
            x = layer(x)
        return x


class Decoder(nn.ModuleList):
    def __init__(self, dim: int, heads: int, layers: int, dropout: float):
        super().__init__([DecoderLayer(dim, heads, dropout) for _ in range(layers)])

    def forward(self, x, memory):
        for layer in self:
            x = layer(x, memory)
        return x


def param_count(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def check_finite_input(x: torch.Tensor, name: str = "x") -> None:
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).nonzero()[0].tolist()
        raise ValueError(f"{name} holds NaN/inf (first at index {bad}); clean or drop those windows")


def check_rank(x: torch.Tensor, shape: Sequence[Optional[int]], name: str = "x") -> None:
    """Raise unless x has len(shape) dims and matches every non-None size."""
    if x.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name} has shape {list(x.shape)}, expected {want}")
