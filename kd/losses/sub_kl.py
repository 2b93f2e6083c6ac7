"""Sub-action KD: an ordered-alignment teacher's label-free sub-action scores of every token (METHOD.md §4),
distilled into the student's sub-action head.

The action decoder that `action_kl` distils reads one shape code, which on short tokens cannot tell most
sub-actions apart (experiments/subactions.md §6); the teacher's label-free scores read every channel's
codes around the token and name the sub-action far more often. This loss hands those scores on."""
import torch

from kd.losses.action_kl import TokenKL, token_kl_loss


def sub_kl_loss(s_logits: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(t) || softmax(s)) over the whole vocabulary, mean over the B*G tokens; logits (B, G, M)."""
    return token_kl_loss(s_logits, t_logits, "sub_kl", "sub_logits")


class SubKL(TokenKL):
    requires = ("sub_logits",)
    name, field = "sub_kl", "sub_logits"
