"""Sub-action KD: an ordered-alignment teacher's label-free sub-action scores of every token (METHOD.md §4),
distilled into the student's sub-action head.

The action decoder that `action_kl` distils reads one shape code, which on short tokens cannot tell most
sub-actions apart (experiments/subactions.md §6); the teacher's label-free scores read every channel's
codes around the token and name the sub-action far more often. This loss hands those scores on."""
import torch
import torch.nn as nn

from kd.losses.action_kl import token_kl_loss


def sub_kl_loss(s_logits: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(t) || softmax(s)) over the whole vocabulary, mean over the B*G tokens; logits (B, G, M)."""
    return token_kl_loss(s_logits, t_logits, "sub_kl", "sub_logits")


class SubKL(nn.Module):
    requires = ("sub_logits",)

    def __init__(self, cfg, student_dims=None, teacher_dims=None):
        super().__init__()
        self.weight = float(cfg.weight)

    def forward(self, s_out, t_out):
        return {"sub_kl": self.weight * sub_kl_loss(s_out.sub_logits, t_out.sub_logits)}
