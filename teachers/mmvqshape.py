"""Text-guided VQShape (MMVQShape): shape codebook + action codebook via signal-text cross-attention.

Sub-action sentences of each class (embedded by a frozen text encoder) are the keys of a
bidirectional cross-attention with the shape tokens. Which sub-action each token is comes from
the *order* of the class's sub-actions (weak supervision from an ordered transcript):

* every token gets scores over the whole sub-action vocabulary, s_m = cos(P_h w, P_u e_m) / tau, w what
  every channel's tokens look like around its time (window_features; label-free, so usable at test time);
* E-step, without gradient: the window's tokens, pooled into N time bins by span centre t + l/2, are
  aligned to the class's ordered sub-actions by forward-backward on a cyclic left-to-right chain
  (teachers/alignment.py) whose emissions come from a table over the shape codes (online EM), until
  `alignment.scores_from_step`, after which the teacher realigns on its own scores; the state posteriors,
  scattered into the vocabulary, are the targets p (for the first `alignment.warmup_steps`, each bin's
  softmax over the class's entries: set only, no order);
* L_sub = CE(p, softmax(s)) trains the scores; L_act = KL(p || softmax(action_decoder(z_q))) makes
  every shape code decode to a sub-action distribution as well as a shape.

`teacher.alignment.target` names the target ("ordered", "set", or "none": the attention weights of the
cross-attention, as before December 2026). Class text is privileged: evaluation uses the whole
vocabulary as keys.
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from teachers.alignment import (CodeEmissions, chain_kwargs, chain_posteriors, chain_viterbi, mean_bins,
                                pool_bins, state_posteriors, time_bins, tokens_to_vocabulary)
from kd.config import AlignmentConfig
from kd.layers import MLP, Attention, neighbour_context
from kd.vqshape import ShapeCodebook, VQShape, fold_tokens


def masked_mean(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of v over rows where mask is True; 0 (still in the graph) when none is."""
    mask = mask.to(v.dtype)
    return (v * mask).sum() / mask.sum().clamp(min=1)


def kl_rows(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dim, 0 log 0 = 0."""
    return (torch.xlogy(p, p) - p * log_q).sum(dim=-1)


def supcon_loss(sig: torch.Tensor, txt: torch.Tensor, y: torch.Tensor, valid: torch.Tensor,
                temperature: float) -> torch.Tensor:
    """Symmetric cross-modal supervised contrastive loss; same class = positive.

    sig, txt (B, d); y (B,); valid (B,) rows that take part (class-text samples).
    """
    s, t = F.normalize(sig.float(), dim=-1), F.normalize(txt.float(), dim=-1)
    logits = s @ t.t() / temperature                                   # (B, B)
    pos = (y[:, None] == y[None, :]) & valid[None, :]
    cols = valid[None, :].expand_as(logits)

    def one_way(lg, ps, cl):
        logp = lg.masked_fill(~cl, float("-inf")).log_softmax(dim=-1).masked_fill(~cl, 0.0)
        return -(logp * ps).sum(-1) / ps.sum(-1).clamp(min=1)

    loss = one_way(logits, pos, cols) + one_way(logits.t(), pos.t(), cols)
    return masked_mean(loss / 2, valid)


class BinConvReader(nn.Module):
    """P_h over a window's time bins (B, N, width) -> (B, N, out): a 1x1 convolution to `hidden` channels,
    `layers` residual ReLU convolutions of width 5 (each reads 2 more bins either side), a 1x1 convolution out.
    The reader the supervised probe found best on synthetic sub-actions (experiments/receipts/subaction_ceiling.py:
    three layers, 0.90 of the test tokens named given true labels, against 0.84 for an MLP on +-2 bins)."""

    def __init__(self, width: int, out: int, hidden: int, layers: int):
        super().__init__()
        self.inp, self.out = nn.Conv1d(width, hidden, 1), nn.Conv1d(hidden, out, 1)
        self.convs = nn.ModuleList(nn.Conv1d(hidden, hidden, 5, padding=2) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x.transpose(1, 2))
        for conv in self.convs:
            h = h + F.relu(conv(h))
        return self.out(h).transpose(1, 2)


class Chain(NamedTuple):
    """Sequences of the E-step: emissions (S, L, K) of S sequences over L ordered positions; ids (S, K) the
    vocabulary id of each state, n_states (S,); for every token (B*C, N) its sequence `row` (B*C,) and
    position `pos` (B*C, N); `window` (S,) the window of each sequence."""
    emit: torch.Tensor
    ids: torch.Tensor
    n_states: torch.Tensor
    row: torch.Tensor
    pos: torch.Tensor
    window: torch.Tensor


class MMVQShape(VQShape):
    """VQShape whose z head reads text-fused tokens, plus the action branch."""

    TEACH_OUTPUTS = VQShape.TEACH_OUTPUTS | {"action_logits", "action_tokens"}

    @classmethod
    def teach_outputs(cls, teacher_cfg) -> frozenset:
        """TEACH_OUTPUTS, plus the label-free sub-action scores when ordered alignment gives them."""
        aligned = teacher_cfg.alignment.target != "none"
        return cls.TEACH_OUTPUTS | ({"sub_logits"} if aligned else set())

    def __init__(self, cfg, fusion, num_channels: int, num_classes: int, vocab_emb: torch.Tensor,
                 class_index: torch.Tensor, class_mask: torch.Tensor, label_emb: torch.Tensor,
                 align: Optional[AlignmentConfig] = None):
        """cfg: VQShapeConfig; fusion: FusionConfig; align: AlignmentConfig (None: no alignment, the action
        branch learns the attention weights)."""
        super().__init__(cfg, num_channels, num_classes)
        self.check_text(num_classes, vocab_emb, class_index, class_mask, label_emb)
        self.fusion, self.align = fusion, align or AlignmentConfig()
        M, Dt = vocab_emb.shape
        d, K = cfg.dim, class_index.shape[1]
        self.register_buffer("vocab_emb", vocab_emb.float().clone())        # (M, Dt)
        self.register_buffer("class_index", class_index.clamp(min=0).long().clone())  # (n_cls, K), pad -> 0
        self.register_buffer("class_mask", class_mask.bool().clone())       # (n_cls, K)
        self.register_buffer("label_emb", label_emb.float().clone())        # (n_cls, Dt)
        self.text_proj = nn.Linear(Dt, d)
        self.sig_attn = Attention(d, fusion.heads, cfg.dropout)             # Q = shape tokens, K = V = text
        self.txt_attn = Attention(d, fusion.heads, cfg.dropout)             # Q = text, K = V = all channels' tokens
        self.action_decoder = MLP(cfg.dim_code, M, fusion.action_hidden)    # shape code -> sub-action logits
        self.action_attr = MLP(d, d, d)
        self.action_codebook = ShapeCodebook(M, d, cfg.beta, cfg.lambda_entropy, cfg.entropy_gamma,
                                             cfg.entropy_temp)
        with torch.no_grad():  # action codes start at the projected vocabulary embeddings
            self.action_codebook.weight.copy_(self.text_proj(self.vocab_emb))
        self.label_head = MLP(K * d, Dt, d)
        a = self.align
        self.aligned = a.target != "none"   # sub-action scores and the E-step exist
        if self.aligned:
            width = (2 * a.context + 1) * num_channels * (cfg.dim_code + 2 + 2 * a.levels)
            # P_h: an MLP on each token's window features, or (layers > 0) residual convolutions over the
            # window's time bins, each layer reading 2 more bins either side
            self.sub_tok = MLP(width, a.dim, d) if a.layers == 0 else BinConvReader(width, a.dim, d, a.layers)
            self.sub_txt = nn.Linear(Dt, a.dim)                               # P_u
            self.register_buffer("align_steps", torch.zeros((), dtype=torch.long))  # training steps seen
            self.register_buffer("sub_prior", torch.full((M,), 1.0 / M))    # EMA of mean softmax(scores)
            self.code_emit = CodeEmissions(num_channels, M, cfg.num_code, a.code_decay, a.code_smoothing)

    def frozen_parts(self) -> Dict[str, nn.Module]:
        """The shape parts, plus the action codebook and decoder (a student's action tokens go through them)."""
        return {**super().frozen_parts(), "action_codebook": self.action_codebook, "action_decoder": self.action_decoder}

    @staticmethod
    def check_text(num_classes, vocab_emb, class_index, class_mask, label_emb) -> None:
        if class_index.shape != class_mask.shape or class_index.shape[0] != num_classes:
            raise ValueError(f"class_index {list(class_index.shape)} / class_mask {list(class_mask.shape)} "
                             f"must both be [num_classes={num_classes}, K]")
        empty = (~class_mask.bool().any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"classes {empty} have no sub-action text; add sub-actions for them")
        if label_emb.shape != (num_classes, vocab_emb.shape[1]):
            raise ValueError(f"label_emb {list(label_emb.shape)} must be [{num_classes}, {vocab_emb.shape[1]}]")
        if int(class_index[class_mask.bool()].max()) >= vocab_emb.shape[0]:
            raise ValueError("class_index points past the vocabulary")
        if (class_mask.long().cummin(dim=1).values != class_mask.long()).any():
            raise ValueError("class_mask must be a prefix per class (sub-actions first, padding last)")

    @property
    def M(self) -> int:
        return self.vocab_emb.shape[0]

    @property
    def num_actions(self) -> int:
        return self.M

    # -- keys ---------------------------------------------------------------------------
    def keys_for(self, y: Optional[torch.Tensor], keys: str, batch: int):
        """-> key ids (B, Kp), key mask (B, Kp), class_mode (B,).

        keys: "class" (each sample's own sub-actions: privileged), "vocab" (the whole
        vocabulary: no label), "mix" (training: vocab_prob of the samples use the vocabulary).
        """
        dev, M, K = self.vocab_emb.device, self.M, self.class_index.shape[1]
        if keys == "vocab":
            idx = torch.arange(M, device=dev).expand(batch, M)
            return idx, torch.ones_like(idx, dtype=torch.bool), torch.zeros(batch, dtype=torch.bool, device=dev)
        if y is None:
            raise ValueError(f"keys={keys!r} needs the labels y (class text is looked up by label)")
        if keys == "class":
            return self.class_index[y], self.class_mask[y], torch.ones(batch, dtype=torch.bool, device=dev)
        if keys != "mix":
            raise ValueError(f"keys must be 'class', 'vocab' or 'mix', got {keys!r}")
        class_mode = torch.rand(batch, device=dev) >= self.fusion.vocab_prob
        Kp = max(K, M)
        cls_idx = F.pad(self.class_index[y], (0, Kp - K))                  # (B, Kp)
        cls_mask = F.pad(self.class_mask[y], (0, Kp - K))
        voc_idx = F.pad(torch.arange(M, device=dev), (0, Kp - M)).expand(batch, Kp)
        voc_mask = (torch.arange(Kp, device=dev) < M).expand(batch, Kp)
        cm = class_mode[:, None]
        return torch.where(cm, cls_idx, voc_idx), torch.where(cm, cls_mask, voc_mask), class_mode

    # -- forward ------------------------------------------------------------------------
    train_keys = "mix"

    def teach(self, x: torch.Tensor, y: Optional[torch.Tensor] = None, keys: Optional[str] = None):
        """KD outputs; by default computed with the class text (privileged, fusion.teach_keys)."""
        keys = keys or self.fusion.teach_keys
        out = self(x, y, keys=keys, reconstruct=False)
        t = self.teach_from(out, x.shape[0])
        t.action_logits = fold_tokens(out["action_logits"], x.shape[0])
        t.action_tokens = out["action_tokens"]                              # (B, Kp, d), zeros at padding
        if self.aligned:
            t.sub_logits = fold_tokens(out["sub_scores"], x.shape[0])
        return t

    def fuse(self, h: torch.Tensor, batch: int, y: Optional[torch.Tensor], keys: str) -> Dict[str, torch.Tensor]:
        C, M = self.num_channels, self.M
        key_idx, key_mask, class_mode = self.keys_for(y, keys, batch)
        u = self.text_proj(self.vocab_emb)[key_idx]                         # (B, Kp, d)
        a, attn = self.sig_attn.forward_with_weights(
            h, u.repeat_interleave(C, 0), key_mask.repeat_interleave(C, 0))  # (B*C, N, d), (B*C, N, Kp)
        u_fused = u + self.txt_attn(u, fold_tokens(h, batch))               # (B, Kp, d)
        idx = key_idx.repeat_interleave(C, 0)[:, None, :].expand_as(attn)
        p_tok = attn.new_zeros(*attn.shape[:2], M).scatter_add_(-1, idx, attn.detach())  # (B*C, N, M)
        h_fused = h + a                                                     # h' = h + MHA(h, u)
        return {"h_z": h_fused, "h_fused": h_fused, "attn": attn, "p_tok": p_tok, "text_tokens": u_fused,
                "key_idx": key_idx, "key_mask": key_mask, "class_mode": class_mode}

    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None, keys: str = "vocab",
                reconstruct: bool = True) -> Dict[str, torch.Tensor]:
        out = super().forward(x, y, keys, reconstruct)
        out["action_logits"] = self.action_decoder(out["z_q"])              # (B*C, N, M)
        if self.aligned:
            out["sub_scores"] = self.sub_scores(self.token_projection(out, x.shape[0]))  # (B*C, N, M)
        out.update(self.action_branch(out))
        return out

    def window_features(self, out: Dict[str, torch.Tensor], batch: int) -> torch.Tensor:
        """What the scores read (B*C, N, (2k+1)*C*W), k = alignment.context, W = dim_code + 2 (+ 2):
        for each token, the mean code, mean and std of every channel's tokens in its time bin (N equal bins,
        by span centre) and in the k bins either side (zeros past the window's ends or where a bin is
        empty); with alignment.levels also their mean and log std in the input's units (the window is
        z-normalised before tokenising, which hides a level such as the direction of gravity). A motion is what all axes do at once over a stretch of time; one channel's short
        subsequence is ambiguous."""
        ctx, idx = self.bin_features(out, batch)
        return ctx.gather(1, idx.expand(-1, -1, ctx.shape[-1])).view(batch * self.num_channels, -1, ctx.shape[-1])

    def token_projection(self, out: Dict[str, torch.Tensor], batch: int) -> torch.Tensor:
        """P_h of every token (B*C, N, alignment.dim): the MLP on its window features, or the convolutional reader
        over the window's bins (alignment.layers > 0), each token then taking its bin's output."""
        if self.align.layers == 0:
            return self.sub_tok(self.window_features(out, batch))
        ctx, idx = self.bin_features(out, batch)
        z = self.sub_tok(ctx)                                                          # (B, N, alignment.dim)
        return z.gather(1, idx.expand(-1, -1, z.shape[-1])).view(batch * self.num_channels, -1, z.shape[-1])

    def bin_features(self, out: Dict[str, torch.Tensor], batch: int):
        """-> every time bin's features with k bins either side (B, N, (2k+1)*C*(dim_code+2)), and the bin of
        every token (B, C*N, 1), channel-major."""
        C = self.num_channels
        parts = [out["z_e"], out["mu"], out["sigma"]]
        if self.align.levels:   # instance_norm's statistics (B*C, 1) put the token back on the input's scale
            parts += [out["mean"][:, None] + out["std"][:, None] * out["mu"],
                      (out["std"][:, None] * out["sigma"]).clamp(min=1e-6).log()]
        f = torch.cat(parts, -1).view(batch, C, out["z_e"].shape[1], -1)
        N, W = f.shape[2], f.shape[3]
        bins = time_bins((out["t"] + out["l"] / 2).view(batch, C, N), N)[..., None]   # (B, C, N, 1)
        total = f.new_zeros(batch, C, N, W).scatter_add(2, bins.expand_as(f), f)
        count = f.new_zeros(batch, C, N, 1).scatter_add(2, bins, torch.ones_like(bins, dtype=f.dtype))
        per_bin = (total / count.clamp(min=1)).permute(0, 2, 1, 3).flatten(2)          # (B, N, C*W)
        return neighbour_context(per_bin, self.align.context), bins.view(batch, C * N, 1)  # bins n-k .. n+k

    def sub_scores(self, proj: torch.Tensor) -> torch.Tensor:
        """Label-free sub-action scores of every token over the whole vocabulary (B', N, M); proj: each token's
        projection P_h (token_projection)."""
        tok = F.normalize(proj, dim=-1)
        txt = F.normalize(self.sub_txt(self.vocab_emb), dim=-1)
        return tok @ txt.t() / self.align.temperature

    # -- ordered alignment --------------------------------------------------------------
    def scaled_scores(self, out: Dict[str, torch.Tensor]) -> torch.Tensor:
        """log softmax(scores) - log prior (B*C, N, M), detached: a likelihood up to a per-token constant."""
        return out["sub_scores"].detach().float().log_softmax(dim=-1) - self.sub_prior.clamp(min=1e-8).log()

    @torch.no_grad()
    def chain(self, out: Dict[str, torch.Tensor], y: torch.Tensor) -> "Chain":
        """The sequences the E-step and decoding run on: one per window (B) over N equal time bins; a bin
        emits the summed log p(code | state, channel) of every token (of every channel) whose span centre
        falls in it; from step `alignment.scores_from_step` on, the mean scaled score likelihood of those
        tokens instead."""
        B, C = len(y), self.num_channels
        codes = out["code_idx"].view(B, C, -1)
        N = codes.shape[-1]
        bins = time_bins((out["t"] + out["l"] / 2).view(B, C * N), N)         # (B, C*N)
        ids = self.class_index[y]
        rows = torch.arange(B, device=y.device)
        if self.reads_scores():
            states = ids.repeat_interleave(C, 0)[:, None, :].expand(-1, N, -1)       # (B*C, N, K)
            tok = self.scaled_scores(out).gather(-1, states).view(B, C * N, -1)     # (B, C*N, K)
            emit = mean_bins(tok, bins, N)
        else:
            emit = pool_bins(self.code_emit.token_emissions(codes, ids).flatten(1, 2), bins, N)
        return Chain(emit, ids, self.class_mask[y].sum(dim=1), rows.repeat_interleave(C),
                     bins.view(B * C, N), rows)

    def reads_scores(self) -> bool:
        """Whether the code-table chain has switched to the scores (alignment.scores_from_step)."""
        start = self.align.scores_from_step
        return start is not None and int(self.align_steps) >= start

    @torch.no_grad()
    def update_prior(self, out: Dict[str, torch.Tensor]) -> None:
        m = self.align.prior_momentum
        self.sub_prior.mul_(m).add_((1 - m) * out["sub_scores"].detach().float().softmax(-1).mean(dim=(0, 1)))

    @torch.no_grad()
    def alignment_targets(self, out: Dict[str, torch.Tensor], y: torch.Tensor, ordered: bool) -> torch.Tensor:
        """E-step targets p (B*C, N, M): chain posteriors (ordered) or the class-masked softmax (set). In
        training with emissions from the codes, the posteriors also update the code table (the M-step)."""
        c = self.chain(out, y)
        post = state_posteriors(c.emit, c.n_states, ordered, self.align.p_stay, self.align.chain)
        tok = post[c.row[:, None], c.pos]                                     # (B*C, N, K)
        if self.training:
            self.code_emit.update(out["code_idx"].view(len(y), self.num_channels, -1), c.ids,
                                  tok.view(len(y), self.num_channels, *tok.shape[1:]))
        return tokens_to_vocabulary(tok, c.ids[c.row], self.M)

    @torch.no_grad()
    def decode_subactions(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Held-out decoding, tokens in their own order (B*C, N): `viterbi` = the vocabulary id of each
        token on the best ordered path given class y; `free` = argmax of its label-free scores;
        `loglik` (B,) = each window's alignment log-likelihood under class y (summed over its sequences);
        `path` (B, N) = that path itself, each window's state index in every time bin."""
        return self.decode(self(x, keys="vocab", reconstruct=False), y)

    @torch.no_grad()
    def decode(self, out: Dict[str, torch.Tensor], y: torch.Tensor) -> Dict[str, torch.Tensor]:
        """decode_subactions on the outputs of a forward already run (keys="vocab")."""
        c = self.chain(out, y)
        path, _ = chain_viterbi(c.emit, c.n_states, **chain_kwargs(self.align.chain),
                                p_stay=self.align.p_stay)
        voc = c.ids.gather(1, path)                                           # (S, L) vocabulary ids
        return {"viterbi": voc[c.row[:, None], c.pos], "free": out["sub_scores"].argmax(-1), "path": path,
                "loglik": self.window_loglik(c, len(y)), "t": out["t"], "l": out["l"]}

    def window_loglik(self, c: "Chain", batch: int) -> torch.Tensor:
        """(B,) each window's alignment log-likelihood under the class its chain was built for."""
        _, loglik = chain_posteriors(c.emit, c.n_states, **chain_kwargs(self.align.chain),
                                     p_stay=self.align.p_stay)
        return loglik.new_zeros(batch).index_add_(0, c.window, loglik)

    def action_branch(self, out: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Quantise the text-query tokens to the action codebook and predict the label embedding."""
        a = self.action_attr(out["text_tokens"])                            # (B, Kp, d)
        mask = out["key_mask"]
        a_q_valid, _, vq, _ = self.action_codebook(a[mask])                 # valid keys only
        a_q = torch.zeros_like(a).masked_scatter(mask[..., None], a_q_valid)
        K = self.class_index.shape[1]
        pred = self.label_head(a_q[:, :K].flatten(1))                       # (B, Dt); class-mode rows meaningful
        return {"action_tokens": a_q, "vq_action": vq, "label_pred": pred}

    # -- losses -------------------------------------------------------------------------
    def losses(self, out: Dict[str, torch.Tensor], y: torch.Tensor, supervised: bool = True) -> Dict[str, torch.Tensor]:
        """Adds sub (not with the attention target), act, label, con, vq_action; the label and con terms
        average over class-mode samples, sub and act over every sample (its class is known in training)."""
        terms = super().losses(out, y, supervised)
        if not supervised:
            return terms
        f, a, C = self.fusion, self.align, self.num_channels
        cm = out["class_mode"]
        log_q = out["action_logits"].float().log_softmax(dim=-1)
        if not self.aligned:   # attention weights exist over class text only on class-mode rows
            act = kl_rows(out["p_tok"].float(), log_q).mean(dim=-1)         # (B*C,)
            terms["act"] = f.lambda_act * masked_mean(act, cm.repeat_interleave(C))
        else:
            ordered = a.target == "ordered" and int(self.align_steps) >= a.warmup_steps
            if self.training:
                self.update_prior(out)
            p = self.alignment_targets(out, y, ordered)
            if self.training:
                self.align_steps += 1
            terms["sub"] = a.weight * -(p * out["sub_scores"].float().log_softmax(dim=-1)).sum(-1).mean()
            terms["act"] = f.lambda_act * kl_rows(p, log_q).mean()
        cos = F.cosine_similarity(out["label_pred"].float(), self.label_emb[y], dim=-1)
        terms["label"] = f.lambda_label * masked_mean(1 - cos, cm)
        mask = out["key_mask"][..., None].to(out["text_tokens"].dtype)
        txt = (out["text_tokens"] * mask).sum(1) / mask.sum(1)              # (B, d)
        sig = fold_tokens(out["h_fused"], len(y)).mean(1)                   # (B, d)
        terms["con"] = f.lambda_con * supcon_loss(sig, txt, y, cm, f.con_temperature)
        terms["vq_action"] = f.lambda_vq_action * out["vq_action"]
        return terms
