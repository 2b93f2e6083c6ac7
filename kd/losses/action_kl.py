"""Action KD: KL between teacher and student sub-action distributions of every token."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def action_kl_loss(s_logits: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(t) || softmax(s)) over the M sub-actions, mean over the B*G tokens; logits (B, G, M).
    The teacher is detached."""
    if s_logits.shape != t_logits.shape:
        raise ValueError(f"action_kl: student action_logits {tuple(s_logits.shape)} and teacher action_logits "
                         f"{tuple(t_logits.shape)} differ; both must be (B, G, M) over the same vocabulary")
    log_s = F.log_softmax(s_logits.float(), dim=-1)                 # (B, G, M), fp32 even under autocast
    log_t = F.log_softmax(t_logits.detach().float(), dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum(-1).mean()


class ActionKL(nn.Module):
    requires = ("action_logits",)

    def __init__(self, cfg, student_dims=None, teacher_dims=None):
        super().__init__()
        self.weight = float(cfg.weight)

    def forward(self, s_out, t_out):
        return {"action_kl": self.weight * action_kl_loss(s_out.action_logits, t_out.action_logits)}
