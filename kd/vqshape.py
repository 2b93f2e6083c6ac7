"""VQShape: interpretable shape tokens for time series.

Wen et al., "Abstracted Shapes as Tokens", NeurIPS 2024 (https://arxiv.org/abs/2411.01006).
Formulas: METHOD.md §3 (= the official code's pretraining recipe). Channels
are folded into the batch: every series below is one channel of one window, (B*C, T).
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from kd.layers import MLP, Decoder, Encoder, check_finite_input, check_rank, entropy
from kd.outputs import Outputs


# ----------------------------------------------------------------------------- helpers
def instance_norm(x: torch.Tensor, eps: float = 1e-5):
    """x (B', T) -> ((x - mean) / sqrt(var + eps), mean, std); unbiased var as the official code."""
    mean = x.mean(dim=-1, keepdim=True)
    std = (x.var(dim=-1, keepdim=True) + eps).sqrt()
    return (x - mean) / std, mean, std


def extract_subsequence(x: torch.Tensor, t: torch.Tensor, l: torch.Tensor, length: int) -> torch.Tensor:
    """Linearly resample x on [t, min(t + l, 1)] to `length` points.

    x (B', T); t, l (B', N, 1) -> (B', N, length). Equal to the official
    grid_sample(bilinear, align_corners=True, border) without its smoothing (recipe: smooth=1).
    """
    B, T = x.shape
    r = torch.linspace(0, 1, length, device=x.device, dtype=x.dtype)
    start = t * (T - 1)
    end = (t + l).clamp(max=1) * (T - 1)
    pos = start + (end - start) * r                          # (B', N, length)
    i0 = pos.floor().clamp(0, T - 2)
    w = pos - i0
    i0 = i0.long().flatten(1)                                # (B', N*length)
    x0, x1 = x.gather(1, i0), x.gather(1, i0 + 1)
    return (x0 + (x1 - x0) * w.flatten(1)).view_as(pos)


def disentangle_loss(t: torch.Tensor, l: torch.Tensor, threshold: float, min_len: float) -> torch.Tensor:
    """L_div = mean_{i != j} relu(threshold - ||p_i - p_j||), p = r (cos pi t, sin pi t), r = log l / log min_len."""
    r = l.log() / math.log(min_len)
    p = torch.cat([r * torch.cos(math.pi * t), r * torch.sin(math.pi * t)], dim=-1)  # (B', N, 2)
    i, j = torch.triu_indices(p.shape[1], p.shape[1], offset=1, device=p.device)
    d = (p[:, i] - p[:, j]).norm(dim=-1)                     # (B', N(N-1)/2): symmetric, so = mean over i != j
    return F.relu(threshold - d).mean()


def row_stats(s: torch.Tensor, floor: float = 1e-2):
    """Mean and (unbiased) std of each row, the std floored so a flat row stays flat."""
    return s.mean(-1, keepdim=True), s.std(-1, keepdim=True).clamp(min=floor)


def znorm_rows(s: torch.Tensor, floor: float = 1e-2) -> torch.Tensor:
    """Rows to zero mean and unit (unbiased) std, as the shape decoder's output; std floored so a
    flat subsequence stays flat instead of amplifying noise."""
    mean, std = row_stats(s, floor)
    return (s - mean) / std


def span_weights(t: torch.Tensor, l: torch.Tensor, num_patch: int) -> torch.Tensor:
    """t, l (B', N, 1) -> a (B', num_patch, N): a[i, j] = w_ij / max(sum_j w_ij, 1), where w_ij is token
    j's soft cover of patch i's centre c_i = (i + 1/2) / num_patch,
    sigmoid((c_i - t_j) / k) * sigmoid((t_j + l_j - c_i) / k) with k = a quarter patch: a patch under
    several spans reads their mean, a patch under none reads ~nothing."""
    k = 0.25 / num_patch
    c = (torch.arange(num_patch, device=t.device, dtype=t.dtype) + 0.5) / num_patch     # (P,)
    t_, end = t.transpose(1, 2), (t + l).clamp(max=1).transpose(1, 2)                 # (B', 1, N)
    w = torch.sigmoid((c[:, None] - t_) / k) * torch.sigmoid((end - c[:, None]) / k)  # (B', P, N)
    return w / w.sum(-1, keepdim=True).clamp(min=1.0)


def cover_fraction(t: torch.Tensor, l: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """t, l (B', N, 1); interval edges lo, hi (K,) -> (B', N, K): the fraction of interval k that token
    n's span [t, min(t + l, 1)] covers."""
    end = (t + l).clamp(max=1)
    return (torch.minimum(end, hi) - torch.maximum(t, lo)).clamp(min=0) / (hi - lo)


def span_overlap_weights(t: torch.Tensor, l: torch.Tensor, num_patch: int) -> torch.Tensor:
    """t, l (B', N, 1) -> a (B', num_patch, N): a[i, j] = o_ij / max(sum_j o_ij, 1), where o_ij is the
    fraction of patch i, [i / P, (i + 1) / P], that token j's span covers. Unlike `span_weights`, which
    looks only at patch centres (so a span may shrink to the centres it owns and leave the rest of the
    window under no span), a span that shrinks off part of its patch loses that share of it."""
    edges = torch.arange(num_patch + 1, device=t.device, dtype=t.dtype) / num_patch
    o = cover_fraction(t, l, edges[:-1], edges[1:]).transpose(1, 2)                  # (B', P, N)
    return o / o.sum(-1, keepdim=True).clamp(min=1.0)


def tiling_logits(n: int, min_len: float) -> torch.Tensor:
    """(n, 2) logits of (t, l) that put slot i on [i/n, i/n + 2/n] through the heads' parameterisation
    t = sigmoid(a) (1 - min_len), l = sigmoid(b) (1 - t) + min_len (spans overlap by half)."""
    t = torch.arange(n, dtype=torch.float32) / n
    l_frac = ((2.0 / n - min_len) / (1 - t)).clamp(0.01, 0.99)
    return torch.stack([torch.logit((t / (1 - min_len)).clamp(0.01, 0.99)), torch.logit(l_frac)], dim=-1)


def sigmoid_spans(logits: torch.Tensor, min_len: float):
    """(t, l) logits (..., 2) -> the official heads' spans: t = sigmoid(a) (1 - min_len),
    l = sigmoid(b) (1 - t) + min_len."""
    tl = torch.sigmoid(logits)
    t = tl[..., :1] * (1 - min_len)
    return t, tl[..., 1:] * (1 - t) + min_len


def in_span_order(x: torch.Tensor, t: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """Per-token features x (B', N, k) reordered along N by span centre t + l/2 (t, l (B', N, 1))."""
    order = (t + l / 2).squeeze(-1).detach().argsort(dim=1)                            # (B', N)
    return x.gather(1, order[..., None].expand_as(x))


def fold_tokens(t: torch.Tensor, batch: int) -> torch.Tensor:
    """(B*C, N, k) -> (B, C*N, k): one window's tokens, channel-major."""
    return t.reshape(batch, -1, t.shape[-1])


# ----------------------------------------------------------------------------- codebook
class ShapeCodebook(nn.Module):
    """Euclidean VQ with straight-through gradients, commitment and entropy terms; codes start
    uniform(+-1/K) as in the official code.

    L_vq = mean((sg[z_q] - z_e)^2) + beta * mean((z_q - sg[z_e])^2)
           + lambda_H * (mean_tok H(p) - gamma * H(mean_tok p)),  p = softmin(||z_e - e_k||^2 / temp)
    """

    def __init__(self, num_code: int, dim_code: int, beta: float, lambda_entropy: float,
                 entropy_gamma: float, entropy_temp: float):
        super().__init__()
        self.beta, self.lambda_entropy = beta, lambda_entropy
        self.gamma, self.temp = entropy_gamma, entropy_temp
        self.weight = nn.Parameter(torch.empty(num_code, dim_code).uniform_(-1 / num_code, 1 / num_code))

    @property
    def num_code(self) -> int:
        return self.weight.shape[0]

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """z (n, dc) -> squared distances (n, K), in fp32."""
        z, e = z.float(), self.weight.float()
        return z.pow(2).sum(-1, keepdim=True) + e.pow(2).sum(-1) - 2 * z @ e.t()

    def forward(self, z_e: torch.Tensor):
        """z_e (n, dc) -> z_q (straight-through), idx (n,), loss, distances (n, K)."""
        d = self.distances(z_e)
        idx = d.argmin(dim=-1)
        e = self.weight[idx]
        loss = F.mse_loss(z_e, e.detach()) + self.beta * F.mse_loss(e, z_e.detach())
        if self.lambda_entropy > 0:
            p = F.softmin(d / self.temp, dim=-1)
            loss = loss + self.lambda_entropy * (entropy(p).mean() - self.gamma * entropy(p.mean(0)))
        z_q = z_e + (e - z_e).detach()
        return z_q, idx, loss, d


# ----------------------------------------------------------------------------- shape decoder
class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(16, c_in), nn.GELU(), nn.Conv1d(c_in, c_out, 3, padding=1),
            nn.GroupNorm(16, c_out), nn.GELU(), nn.Conv1d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x):
        return self.skip(x) + self.block(x)


class Upsample(nn.Module):
    def __init__(self, channels: int, scale: int = 4):
        super().__init__()
        self.scale = scale
        self.conv = nn.Conv1d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=self.scale))


class ShapeDecoder(nn.Module):
    """Code (dc,) -> normalised shape (len_s,); the official convolutional decoder.

    `forward` can decode each *distinct* code once. This is exact: the forward value is the
    decoder at the code; the decoder's weight gradients are the per-token output gradients
    summed per code (autograd does this through the gather); the gradient to each token's
    z_e is the decoder Jacobian at its code (dc columns, from one batched JVP) applied to
    that token's output gradient. The codebook gets no gradient here, as in the official
    straight-through code.
    """

    def __init__(self, dim_code: int, len_s: int, out_kernel: int = 1, dedup: bool = True):
        super().__init__()
        if len_s % 16:
            raise ValueError(f"len_s={len_s} must be divisible by 16 (two x4 upsamplings of len_s/16)")
        self.len_s, self.dedup = len_s, dedup
        self.fc = nn.Linear(dim_code, 8 * len_s)
        self.net = nn.Sequential(
            ResBlock(128, 128), nn.GELU(), Upsample(128),
            ResBlock(128, 64), nn.GELU(), Upsample(64), nn.GELU(),
            nn.Conv1d(64, 1, out_kernel, padding="same"))

    def decode(self, c: torch.Tensor) -> torch.Tensor:
        """c (n, dc) -> normalised shapes (n, len_s)."""
        y = self.net(self.fc(c).view(c.shape[0], 128, self.len_s // 16)).squeeze(1)
        return (y - y.mean(-1, keepdim=True)) / (y.std(-1, keepdim=True) + 1e-8)

    @torch.no_grad()
    def jacobian(self, c: torch.Tensor) -> torch.Tensor:
        """c (U, dc) -> d decode / d c, (U, len_s, dc): one forward-mode pass per input direction,
        vmapped over the dc directions so the primal is computed once."""
        basis = torch.eye(c.shape[1], device=c.device, dtype=c.dtype)                # (dc, dc)
        tangent = lambda v: torch.func.jvp(self.decode, (c,), (v.expand_as(c),))[1]  # noqa: E731
        return torch.func.vmap(tangent, out_dims=2)(basis)                           # (U, len_s, dc)

    def forward(self, z_q: torch.Tensor, idx: Optional[torch.Tensor] = None,
                codes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """z_q (n, dc) straight-through codes; idx (n,) their ids; codes (K, dc) -> (n, len_s).

        Codes used by enough tokens are decoded once (cost ~3 + 1.25*dc decoder passes with
        gradients: one forward+backward and the vmapped JVP, measured); the other tokens are
        decoded one by one (~3 passes each). Both are exact, so the split only changes speed.
        """
        if not self.dedup or idx is None:
            return self.decode(z_q)
        uniq, inv, counts = idx.unique(return_inverse=True, return_counts=True)
        needs_grad = torch.is_grad_enabled() and z_q.requires_grad
        popular = 3 * counts > 3 + 1.25 * z_q.shape[1] * needs_grad           # (U,)
        if not popular.any():
            return self.decode(z_q)
        on_pop = popular[inv]                                                 # (n,)
        pop_tok, rare_tok = on_pop.nonzero().flatten(), (~on_pop).nonzero().flatten()
        slot = popular.cumsum(0) - 1                                          # code -> row among popular codes
        parts = [self.decode_once(z_q[pop_tok], slot[inv[pop_tok]], codes[uniq[popular]], needs_grad)]
        if len(rare_tok):
            parts.append(padded(self.decode, z_q[rare_tok]))
        order = torch.cat([pop_tok, rare_tok]).argsort()
        return torch.cat(parts)[order]

    def decode_once(self, z_q: torch.Tensor, inv: torch.Tensor, codes: torch.Tensor, needs_grad: bool) -> torch.Tensor:
        """Tokens z_q (m, dc) whose codes are codes[inv]: decode each code once (exact)."""
        c = codes.detach().to(z_q.dtype)
        s = padded(self.decode, c)[inv]                                       # (m, len_s)
        if needs_grad:
            J = padded(self.jacobian, c)                                      # (U, len_s, dc)
            s = s + torch.einsum("nlk,nk->nl", J[inv], z_q - z_q.detach())   # value 0, grad J^T g
        return s


def padded(fn, x: torch.Tensor, multiple: int = 64) -> torch.Tensor:
    """fn(x) with the batch padded (by repeating row 0) to a multiple of `multiple`, padding dropped.
    Steady tensor sizes across steps keep the CPU allocator from fragmenting the heap; the
    padded rows receive no gradient."""
    pad = -len(x) % multiple
    if pad == 0:
        return fn(x)
    return fn(torch.cat([x, x[:1].expand(pad, -1)]))[: len(x)]


# ----------------------------------------------------------------------------- model parts
class PatchEncoder(nn.Module):
    """64 non-overlapping patches of 8 -> Linear + learned positions -> Transformer encoder."""

    def __init__(self, len_input: int, patch_size: int, num_patch: int, dim: int, heads: int,
                 layers: int, dropout: float, pos_init_std: float = 1.0):
        super().__init__()
        if patch_size * num_patch != len_input:
            raise ValueError(f"patch_size*num_patch = {patch_size}*{num_patch} must equal len_input={len_input}")
        self.patch_size = patch_size
        self.proj = nn.Linear(patch_size, dim)
        # N(0, 1) like the official nn.Embedding: at 0.02 the positions are ~3 % of a patch's content
        # and the tokenizer sees an almost unordered set of patches.
        self.pos = nn.Parameter(torch.randn(num_patch, dim) * pos_init_std)
        self.encoder = Encoder(dim, heads, layers, dropout)

    def forward(self, x: torch.Tensor, mask_ratio: float = 0.0) -> torch.Tensor:
        """x (B', T) normalised -> patch embeddings (B', P_kept, d)."""
        e = self.proj(x.unfold(-1, self.patch_size, self.patch_size)) + self.pos  # (B', P, d)
        if mask_ratio > 0:  # MAE-style: encode a random subset of patches
            B, P, _ = e.shape
            keep = P - int(mask_ratio * P)
            kept = torch.rand(B, P, device=x.device).argsort(dim=-1)[:, :keep]  # (B', keep)
            e = e.gather(1, kept[..., None].expand(-1, -1, e.shape[-1]))
        return self.encoder(e)


class AttributeHeads(nn.Module):
    """h -> (z_e, t, l, mu, sigma); the z head may read a different (text-fused) input.

    code_input="subsequence": the token decides where (t, l) and its subsequence what: x_n[t, t+l]
    (t and l detached) resampled to len_s gives mu and sigma (its mean and std) and, z-normalised,
    the input of an MLP code encoder for z_e.
    """

    def __init__(self, dim: int, dim_code: int, min_len: float, code_input: str = "token", len_s: int = 128,
                 span_offsets: Optional[torch.Tensor] = None):
        super().__init__()
        if code_input not in ("token", "subsequence"):
            raise ValueError(f"code_input must be 'token' or 'subsequence', got {code_input!r}")
        self.min_len, self.code_input, self.len_s = min_len, code_input, len_s
        if code_input == "token":
            self.z_head = MLP(dim, dim_code, dim)
            self.mu_head = MLP(dim, 1, dim)
            self.sigma_head = MLP(dim, 1, dim)
        else:
            self.code_encoder = MLP(len_s, dim_code, dim)
        self.tl_head = MLP(dim, 2, dim)
        # per-slot logit offsets (N, 2) of (t, l), learned; None = the official heads
        self.span_offsets = nn.Parameter(span_offsets) if span_offsets is not None else None

    def forward(self, h: torch.Tensor, h_z: Optional[torch.Tensor] = None,
                x_n: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        logits = self.tl_head(h)
        if self.span_offsets is not None:
            logits = logits + self.span_offsets
        t, l = sigmoid_spans(logits, self.min_len)
        if self.code_input == "token":
            return {"z_e": self.z_head(h if h_z is None else h_z), "t": t, "l": l,
                    "mu": self.mu_head(h), "sigma": F.softplus(self.sigma_head(h))}
        if x_n is None:
            raise ValueError("code_input='subsequence' needs the normalised series x_n")
        sub = extract_subsequence(x_n, t.detach(), l.detach(), self.len_s)     # (B', N, len_s)
        mu, sigma = row_stats(sub)
        return {"z_e": self.code_encoder((sub - mu) / sigma), "t": t, "l": l, "mu": mu, "sigma": sigma}


class TokenHead(nn.Module):
    """Classifier on a window's attribute tokens (z_q, mu, sigma, t, l) of every channel, optionally with
    each channel's instance-norm statistics (mean, log std).

    arch "flat": LayerNorm -> MLP over every token's numbers at once (one weight per slot and number).
    arch "conv": the tokens as a sequence over time (each channel's tokens in span order, the channels'
    numbers stacked): batch norm, two convolutions of width 3 and hidden/2 filters, mean and max over time,
    then a linear layer -- the same filters at every position, as a CNN reads a signal."""

    def __init__(self, num_channels: int, num_token: int, token_dim: int, num_classes: int,
                 hidden: int, channel_stats: bool, dropout: float, arch: str = "flat"):
        super().__init__()
        if arch not in ("flat", "conv"):
            raise ValueError(f"head arch must be 'flat' or 'conv', got {arch!r}")
        self.channel_stats, self.arch, self.num_channels = channel_stats, arch, num_channels
        stats = 2 * num_channels * channel_stats
        if arch == "conv":
            width, seq = hidden // 2, num_channels * token_dim
            self.conv = nn.Sequential(nn.BatchNorm1d(seq), nn.Conv1d(seq, width, 3, padding=1), nn.GELU(),
                                      nn.Dropout(dropout), nn.Conv1d(width, width, 3, padding=1), nn.GELU())
            self.net = nn.Sequential(nn.LayerNorm(2 * width + stats), nn.Linear(2 * width + stats, num_classes))
        else:
            dim_in = num_channels * num_token * token_dim + stats
            self.net = nn.Sequential(nn.LayerNorm(dim_in), nn.Linear(dim_in, hidden), nn.GELU(),
                                     nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def forward(self, tokens: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """tokens (B, C*N, k), each channel's in time order for arch "conv"; mean, std (B, C) -> logits (B, n_cls)."""
        if self.arch == "conv":
            B, CN, k = tokens.shape
            seq = tokens.view(B, self.num_channels, CN // self.num_channels, k).permute(0, 1, 3, 2).flatten(1, 2)
            z = self.conv(seq)                                                  # (B, width, N)
            feats = [z.mean(-1), z.amax(-1)]
        else:
            feats = [tokens.flatten(1)]
        if self.channel_stats:
            feats += [mean, std.log()]
        return self.net(torch.cat(feats, dim=-1))


# ----------------------------------------------------------------------------- VQShape
class VQShape(nn.Module):
    """Signal-only VQShape with a classification head. `forward` -> dict; `losses` -> named terms."""

    min_len = 1 / 64
    # the Outputs fields `teach` fills (kd/contract.py; a test compares them with the real outputs)
    TEACH_OUTPUTS = frozenset({"logits", "attr", "code_dist", "code_idx", "shape_tokens", "features"})
    num_actions = 0        # size of the sub-action vocabulary its tokens are scored on (0: no action branch)

    def __init__(self, cfg, num_channels: int, num_classes: int):
        super().__init__()
        for part in ("enc", "tok", "dec"):
            if cfg.dim % getattr(cfg, f"{part}_heads"):
                raise ValueError(f"vqshape.dim={cfg.dim} must be divisible by vqshape.{part}_heads="
                                 f"{getattr(cfg, f'{part}_heads')}")
        if cfg.len_input % cfg.num_token:
            raise ValueError(f"len_input={cfg.len_input} must be divisible by num_token={cfg.num_token}")
        self.cfg, self.num_channels, self.num_classes = cfg, num_channels, num_classes
        d = cfg.dim
        self.encoder = PatchEncoder(cfg.len_input, cfg.patch_size, cfg.num_patch, d,
                                    cfg.enc_heads, cfg.enc_layers, cfg.dropout, cfg.pos_init_std)
        self.queries = nn.Parameter(torch.randn(1, cfg.num_token, d) / d)
        self.tokenizer = Decoder(d, cfg.tok_heads, cfg.tok_layers, cfg.dropout)
        if cfg.span_init not in ("none", "tiling"):
            raise ValueError(f"span_init must be 'none' or 'tiling', got {cfg.span_init!r}")
        offsets = tiling_logits(cfg.num_token, self.min_len) if cfg.span_init == "tiling" else None
        self.attr = AttributeHeads(d, cfg.dim_code, self.min_len, cfg.code_input, cfg.len_s, offsets)
        self.codebook = ShapeCodebook(cfg.num_code, cfg.dim_code, cfg.beta, cfg.lambda_entropy,
                                      cfg.entropy_gamma, cfg.entropy_temp)
        self.shape_decoder = ShapeDecoder(cfg.dim_code, cfg.len_s, dedup=cfg.dedup_shape_decoder)
        self.attr_encoder = nn.Linear(cfg.dim_code + 4, d)
        self.patch_decoder = Encoder(d, cfg.dec_heads, cfg.dec_layers, cfg.dropout)
        self.dec_cls = nn.Parameter(torch.randn(1, 1, d) / d) if cfg.decoder_cls_token else None
        if cfg.decoder_input not in ("tokens", "spans", "span_overlap"):
            raise ValueError(f"decoder_input must be 'tokens', 'spans' or 'span_overlap', got {cfg.decoder_input!r}")
        self.dec_pos = nn.Parameter(torch.randn(1, cfg.num_token, d) * cfg.pos_init_std) \
            if cfg.decoder_input != "tokens" else None
        self.route = {"spans": span_weights, "span_overlap": span_overlap_weights}.get(cfg.decoder_input)
        self.patch_out = nn.Linear(d, cfg.len_input // cfg.num_token)
        self.head = TokenHead(num_channels, cfg.num_token, cfg.dim_code + 4, num_classes, cfg.head_hidden,
                              cfg.head_channel_stats, cfg.dropout, arch=cfg.head_arch)

    # -- stages --------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        check_rank(x, [None, self.num_channels, self.cfg.len_input])
        check_finite_input(x)

    def tokenize(self, x_n: torch.Tensor) -> torch.Tensor:
        """Normalised series (B', T) -> shape tokens h (B', N, d)."""
        mask_ratio = self.cfg.mask_ratio if self.training else 0.0
        patches = self.encoder(x_n, mask_ratio)                              # (B', P_kept, d)
        return self.tokenizer(self.queries.expand(x_n.shape[0], -1, -1), patches)

    def fuse(self, h: torch.Tensor, batch: int, y: Optional[torch.Tensor], keys: str) -> Dict[str, torch.Tensor]:
        """Hook for text guidance; the signal-only model's z head reads h itself."""
        return {"h_z": h}

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None, keys: str = "vocab",
                reconstruct: bool = True, mix=None) -> Dict[str, torch.Tensor]:
        """x (B, C, T) -> dict of tokens, attributes, codes, logits (+ reconstructions).

        mix: optional map of the window's token features (B, d, C*N) -> same shape, applied
        before the attribute heads (the student's workspace read-out).
        """
        self.check_input(x)
        B = x.shape[0]
        xs = x.reshape(-1, x.shape[-1])                                      # (B*C, T)
        x_n, mean, std = instance_norm(xs)
        h = self.tokenize(x_n)                                               # (B*C, N, d)
        features = fold_tokens(h, B).transpose(1, 2)                         # (B, d, C*N)
        if mix is not None:
            h = mix(features).transpose(1, 2).reshape_as(h)
        out = self.fuse(h, B, y, keys)
        out["features"] = features
        out.update(self.attr(h, out.pop("h_z"), x_n))                       # z_e (B*C, N, dc), t, l, mu, sigma
        grid = out["z_e"].shape[:2]                                          # (B*C, N)
        z_q, idx, vq, dist = self.codebook(out["z_e"].flatten(0, 1))
        out.update(x=xs, x_n=x_n, mean=mean, std=std, h=h, vq=vq, code_dist=dist.view(*grid, -1),
                   z_q=z_q.view_as(out["z_e"]), code_idx=idx.view(grid))
        attrs = torch.cat([out["z_q"], out["mu"], out["sigma"], out["t"], out["l"]], dim=-1)  # (B*C, N, dc+4)
        out["tokens"] = attrs
        out["h_hat"] = self.attr_encoder(attrs)                              # (B*C, N, d)
        out["shape_tokens"] = fold_tokens(out["h_hat"], B)                   # (B, C*N, d)
        head_in = attrs.detach() if self.cfg.head_detach else attrs
        if self.cfg.head_arch == "conv":   # each channel's tokens in the order of their span centres
            head_in = in_span_order(head_in, out["t"], out["l"])
        out["logits"] = self.head(fold_tokens(head_in, B), mean.view(B, -1), std.view(B, -1))
        if reconstruct:
            out.update(self.reconstruct(out))
        return out

    def reconstruct(self, out: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Decoded normalised shapes (B', N, len_s); scaled shapes s_hat_n and series x_hat_n (B', T)
        on the instance-normalised scale; s_hat and x_hat on the input's scale."""
        mean, std = out["mean"], out["std"]
        z_q = out["z_q"]
        shape = self.shape_decoder(z_q.flatten(0, 1), out["code_idx"].flatten(), self.codebook.weight)
        shape = shape.view(*z_q.shape[:2], -1)                               # (B', N, len_s)
        s = shape * out["sigma"] + out["mu"]
        h = out["h_hat"]
        if self.dec_pos is not None:  # patch i reads the tokens covering it, and knows it is patch i
            h = self.route(out["t"], out["l"], h.shape[1]) @ h + self.dec_pos
        if self.dec_cls is not None:  # the official patch decoder reads [cls, tokens] and drops cls
            h = torch.cat([self.dec_cls.expand(len(h), -1, -1), h], dim=1)
        x_hat = self.patch_out(self.patch_decoder(h)[:, -out["h_hat"].shape[1]:]).flatten(1)  # (B', T)
        return {"shape": shape, "s_hat_n": s, "x_hat_n": x_hat,
                "s_hat": s * std.unsqueeze(1) + mean.unsqueeze(1), "x_hat": x_hat * std + mean}

    # -- the engine's protocol -------------------------------------------------------------
    train_keys = "vocab"   # key set while training; MMVQShape mixes class text and vocabulary

    def fit_forward(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return self(batch["x"], batch["y"], keys=self.train_keys)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits without any label text."""
        return self(x, keys="vocab", reconstruct=False)["logits"]

    def teach(self, x: torch.Tensor, y: Optional[torch.Tensor] = None, keys: str = "vocab") -> Outputs:
        """Outputs a student distils from, on the window's token grid G = C*N."""
        return self.teach_from(self(x, y, keys=keys, reconstruct=False), x.shape[0])

    @staticmethod
    def teach_from(out: Dict[str, torch.Tensor], B: int) -> Outputs:
        attr = {k: fold_tokens(out[k], B) for k in ("z_e", "mu", "sigma", "t", "l")}
        return Outputs(logits=out["logits"], attr=attr, code_dist=fold_tokens(out["code_dist"], B),
                       shape_tokens=out["shape_tokens"], features=out["shape_tokens"].transpose(1, 2),
                       code_idx=out["code_idx"].view(B, -1))

    # -- losses --------------------------------------------------------------------------
    def losses(self, out: Dict[str, torch.Tensor], y: torch.Tensor, supervised: bool = True) -> Dict[str, torch.Tensor]:
        """Named, already-weighted terms: x, vq, s, shape, div, and with `supervised` ce (zero-weight
        terms are left out)."""
        c = self.cfg
        sfx = "_n" if c.loss_scale == "normalized" else ""
        with torch.no_grad():
            target = extract_subsequence(out["x" + sfx], out["t"], out["l"], c.len_s)
        terms = {
            "x": c.lambda_x * F.mse_loss(out["x_hat" + sfx], out["x" + sfx]),
            "vq": c.lambda_vq * out["vq"],
            "s": c.lambda_s * F.mse_loss(out["s_hat" + sfx], target),
        }
        if c.lambda_shape_norm > 0:
            terms["shape"] = c.lambda_shape_norm * F.mse_loss(out["shape"], znorm_rows(target))
        if c.lambda_div > 0:
            terms["div"] = c.lambda_div * disentangle_loss(out["t"], out["l"], c.div_threshold, self.min_len)
        if supervised and c.lambda_ce > 0:
            terms["ce"] = c.lambda_ce * F.cross_entropy(out["logits"], y)
        return terms

    def frozen_parts(self) -> Dict[str, nn.Module]:
        """The parts frozen after teacher training and handed to students."""
        return {"codebook": self.codebook, "shape_decoder": self.shape_decoder}
