"""Action KD: KL between teacher and student sub-action distributions of every token."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def action_kl_loss(s_logits: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(t) || softmax(s)) over the M sub-actions, mean over tokens; logits (B, G, M)."""
    log_s = F.log_softmax(s_logits.float(), dim=-1)
    log_t = F.log_softmax(t_logits.detach().float(), dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum(-1).mean()


class ActionKL(nn.Module):
    requires = ("action_logits",)

    def __init__(self, cfg, student_dims=None, teacher_dims=None):
        super().__init__()
        self.weight = cfg.weight

    def forward(self, s_out, t_out):
        return {"action_kl": self.weight * action_kl_loss(s_out["action_logits"], t_out["action_logits"])}
