"""Ordered sub-action alignment: a window's tokens against its class's ordered sub-action list.

The activity of a window repeats its sub-actions in order (k_1, ..., k_K, k_1, ...), so the
tokens of a window, ordered by span centre, walk a left-to-right chain over the K states that
may wrap around (cyclic): any start state; from state j the next token stays in j or advances
to j + 1 (mod K). With per-token emission log-probabilities of the K states this is a hidden
Markov chain, and

* `chain_posteriors` (forward-backward, log space) gives each token's posterior over the states
  and the window's log-likelihood: the E-step of weak supervision from an ordered transcript;
  it runs without gradient, since the posteriors are *targets*;
* `chain_viterbi` gives the single best state sequence (a window's decoded sub-actions).

Both are vectorised over sequences (one Python step per token, none per state or sequence).
Sequences may have different numbers of states (`n_states`; states at or past it are padding).
Transition weights: stay log p_stay, advance log(1 - p_stay); start: uniform over the states.
Where advancing lands on the same state (one-state cycle) both moves count. `anchored` (a window that
runs through its transcript once, e.g. posture, transition, posture: not cyclic) starts in the first
state and ends in the last, the alignment of a transcript in weakly supervised action segmentation.
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import torch

NEG = float("-inf")


def _neighbours(n_states: torch.Tensor, K: int, cyclic: bool) -> Tuple[torch.Tensor, ...]:
    """prev[s, j], next[s, j] state indices and whether they exist (S, K)."""
    j = torch.arange(K, device=n_states.device).expand(len(n_states), K)
    last = (n_states - 1)[:, None]
    valid = j < n_states[:, None]
    prev = torch.where(j == 0, last, j - 1)
    nxt = torch.where(j == last, torch.zeros_like(j), j + 1).clamp(max=K - 1)   # padding: any index, masked
    prev_ok = valid & ((j > 0) | cyclic)
    next_ok = valid & ((j < last) | cyclic)
    return valid, prev, prev_ok, nxt, next_ok


def _check(log_emit: torch.Tensor, n_states: torch.Tensor, p_stay: float, cyclic: bool, anchored: bool) -> None:
    if log_emit.dim() != 3:
        raise ValueError(f"log_emit must be [sequences, tokens, states], got {list(log_emit.shape)}")
    if n_states.shape != log_emit.shape[:1] or int(n_states.min()) < 1 or int(n_states.max()) > log_emit.shape[2]:
        raise ValueError(f"n_states must be [{log_emit.shape[0]}] with values in 1..{log_emit.shape[2]}")
    if not 0.0 < p_stay < 1.0:
        raise ValueError(f"p_stay={p_stay} must lie in (0, 1)")
    if anchored and (cyclic or log_emit.shape[1] < int(n_states.max())):
        raise ValueError(f"an anchored chain visits each of up to {int(n_states.max())} states once in order: it "
                         f"cannot be cyclic and needs at least as many positions ({log_emit.shape[1]})")


def _ends(n_states: torch.Tensor, K: int, anchored: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Log start and end weights (S, K): uniform start and free end, or (anchored) first state to last."""
    j = torch.arange(K, device=n_states.device).expand(len(n_states), K)
    if not anchored:
        return (-n_states.float().log())[:, None].expand(-1, K), torch.zeros(len(n_states), K, device=n_states.device)
    return (torch.zeros_like(j, dtype=torch.float).masked_fill(j != 0, NEG),
            torch.zeros_like(j, dtype=torch.float).masked_fill(j != (n_states - 1)[:, None], NEG))


@torch.no_grad()
def chain_posteriors(log_emit: torch.Tensor, n_states: torch.Tensor, cyclic: bool = True,
                     p_stay: float = 0.5, anchored: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Forward-backward. log_emit (S, N, K) emission log-probabilities of N ordered tokens over K
    states; n_states (S,) states used per sequence. Returns (posteriors (S, N, K), 0 at padding
    states; log-likelihood (S,)). No gradient flows through either."""
    _check(log_emit, n_states, p_stay, cyclic, anchored)
    S, N, K = log_emit.shape
    e = log_emit.float()
    valid, prev, prev_ok, nxt, next_ok = _neighbours(n_states, K, cyclic)
    start, end = _ends(n_states, K, anchored)
    e = e.masked_fill(~valid[:, None, :], NEG)
    stay, adv = math.log(p_stay), math.log(1 - p_stay)
    alpha = torch.empty(S, N, K, device=e.device)
    alpha[:, 0] = e[:, 0] + start
    for t in range(1, N):
        a = alpha[:, t - 1]
        moved = a.gather(1, prev).masked_fill(~prev_ok, NEG)
        alpha[:, t] = torch.logaddexp(a + stay, moved + adv) + e[:, t]
    beta = torch.zeros(S, N, K, device=e.device).masked_fill(~valid[:, None, :], NEG)
    beta[:, -1] = beta[:, -1] + end
    for t in range(N - 2, -1, -1):
        b = beta[:, t + 1] + e[:, t + 1]
        moved = b.gather(1, nxt).masked_fill(~next_ok, NEG)
        beta[:, t] = torch.logaddexp(b + stay, moved + adv).masked_fill(~valid, NEG)
    loglik = torch.logsumexp(alpha[:, -1] + end, dim=-1)
    post = (alpha + beta - loglik[:, None, None]).exp().masked_fill(~valid[:, None, :], 0.0)
    return post, loglik


@torch.no_grad()
def chain_viterbi(log_emit: torch.Tensor, n_states: torch.Tensor, cyclic: bool = True,
                  p_stay: float = 0.5, anchored: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Best state sequence (S, N) and its log-score (S,) under the same chain."""
    _check(log_emit, n_states, p_stay, cyclic, anchored)
    S, N, K = log_emit.shape
    valid, prev, prev_ok, _, _ = _neighbours(n_states, K, cyclic)
    start, end = _ends(n_states, K, anchored)
    e = log_emit.float().masked_fill(~valid[:, None, :], NEG)
    stay, adv = math.log(p_stay), math.log(1 - p_stay)
    # a one-state cycle reaches itself by both moves
    self_adv = prev_ok & (prev == torch.arange(K, device=e.device))
    stay_w = torch.where(self_adv, torch.tensor(0.0, device=e.device), torch.tensor(stay, device=e.device))
    delta = e[:, 0] + start
    came_from_prev = torch.zeros(S, N, K, dtype=torch.bool, device=e.device)
    for t in range(1, N):
        kept = delta + stay_w
        moved = (delta.gather(1, prev) + adv).masked_fill(~prev_ok | self_adv, NEG)
        came_from_prev[:, t] = moved > kept
        delta = torch.maximum(kept, moved) + e[:, t]
    score, state = (delta + end).max(dim=-1)
    path = torch.empty(S, N, dtype=torch.long, device=e.device)
    path[:, -1] = state
    for t in range(N - 1, 0, -1):
        back = came_from_prev[:, t].gather(1, state[:, None]).squeeze(1)
        state = torch.where(back, prev.gather(1, state[:, None]).squeeze(1), state)
        path[:, t - 1] = state
    return path, score


# ----------------------------------------------------------------------------- targets over a vocabulary
@torch.no_grad()
def state_posteriors(emit: torch.Tensor, n_states: torch.Tensor, ordered: bool, p_stay: float = 0.5,
                     chain: str = "cyclic") -> torch.Tensor:
    """E-step posteriors (S, L, K) of S sequences: ordered = the chain's forward-backward (`chain`: "cyclic", or
    "once": anchored at the first and last state); else the emissions' softmax over each sequence's states (the
    set of its sub-actions, no order)."""
    if ordered:
        return chain_posteriors(emit, n_states, **chain_kwargs(chain), p_stay=p_stay)[0]
    valid = torch.arange(emit.shape[2], device=emit.device)[None, :] < n_states[:, None]
    return emit.float().masked_fill(~valid[:, None, :], NEG).softmax(dim=-1)


def chain_kwargs(chain: str) -> Dict[str, bool]:
    """teacher.alignment.chain -> the chain functions' `cyclic` and `anchored`."""
    if chain not in ("cyclic", "once"):
        raise ValueError(f"teacher.alignment.chain={chain!r} must be 'cyclic' or 'once'")
    return {"cyclic": chain == "cyclic", "anchored": chain == "once"}


def tokens_to_vocabulary(state_probs: torch.Tensor, ids: torch.Tensor, M: int) -> torch.Tensor:
    """Per-state probabilities (G, N, K) of tokens whose states are vocabulary entries ids (G, K) ->
    vocabulary distributions (G, N, M); padding states must carry 0."""
    voc = state_probs.new_zeros(*state_probs.shape[:2], M)
    return voc.scatter_add_(2, ids[:, None, :].expand_as(state_probs), state_probs)


# ----------------------------------------------------------------------------- emissions from shape codes
def time_bins(centre: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Span centres in [0, 1] -> the index of the equal-width time bin each falls in (same shape, long)."""
    return (centre.detach() * n_bins).floor().long().clamp(0, n_bins - 1)


def mean_bins(token_emit: torch.Tensor, bins: torch.Tensor, n_bins: int) -> torch.Tensor:
    """pool_bins averaged over each bin's tokens instead of summed (an empty bin still emits 0)."""
    count = pool_bins(torch.ones_like(token_emit[..., :1]), bins, n_bins).clamp(min=1)
    return pool_bins(token_emit, bins, n_bins) / count


def pool_bins(token_emit: torch.Tensor, bins: torch.Tensor, n_bins: int) -> torch.Tensor:
    """token_emit (S, G, K) log-emissions of G tokens, bins (S, G) -> (S, n_bins, K): a bin emits the sum
    of its tokens' log-emissions (the tokens of one time bin, e.g. of all channels, are independent
    observations of one state); an empty bin emits 0 (no evidence)."""
    out = token_emit.new_zeros(token_emit.shape[0], n_bins, token_emit.shape[2])
    return out.scatter_add_(1, bins[..., None].expand_as(token_emit), token_emit)


class CodeEmissions(torch.nn.Module):
    """The E-step's emissions as a generative table over the discrete shape codes: log p(code | sub-action,
    channel), estimated by online EM. `update` adds the E-step's posterior of every token (its expected
    count) to counts[channel, vocabulary entry, code] after decaying all counts by `decay` (the codebook
    moves during training; old counts are forgotten); the table is the counts plus `smoothing`, normalised
    over codes. Normalising over codes, not over sub-actions, is what keeps one sub-action from explaining
    every token: a sub-action that emits every code gives each of them little probability. Tables are per
    channel because one motion looks different on each axis (a rise on one channel is a fall on another)."""

    def __init__(self, num_channels: int, num_entries: int, num_codes: int, decay: float, smoothing: float):
        super().__init__()
        if not 0.0 <= decay < 1.0 or smoothing <= 0:
            raise ValueError(f"decay={decay} must lie in [0, 1) and smoothing={smoothing} be > 0")
        self.decay, self.smoothing = decay, smoothing
        self.register_buffer("counts", torch.zeros(num_channels, num_entries, num_codes))

    def log_table(self) -> torch.Tensor:
        c = self.counts + self.smoothing
        return (c / c.sum(dim=-1, keepdim=True)).log()                       # (C, M, V)

    def token_emissions(self, codes: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """codes (B, C, N) code index of every token, ids (B, K) vocabulary ids of each window's states ->
        log p(code | state, channel) (B, C, N, K)."""
        C = codes.shape[1]
        ch = torch.arange(C, device=codes.device)[None, :, None, None]
        return self.log_table()[ch, ids[:, None, None, :], codes[..., None]]

    @torch.no_grad()
    def update(self, codes: torch.Tensor, ids: torch.Tensor, post: torch.Tensor) -> None:
        """M-step: codes (B, C, N), ids (B, K), post (B, C, N, K) state posteriors (0 at padding states)."""
        C = codes.shape[1]
        ch = torch.arange(C, device=codes.device)[None, :, None, None].expand_as(post)
        self.counts.mul_(self.decay)
        self.counts.index_put_((ch, ids[:, None, None, :].expand_as(post), codes[..., None].expand_as(post)),
                               post.float(), accumulate=True)
