"""Action KD: KL between teacher and student sub-action distributions of every token."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def token_kl_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, loss: str = "action_kl",
                  field: str = "action_logits") -> torch.Tensor:
    """KL(softmax(t) || softmax(s)) over the last axis (M sub-actions), mean over the B*G tokens; logits
    (B, G, M). The teacher is detached. `loss`/`field` name the caller in the shape error."""
    if s_logits.shape != t_logits.shape:
        raise ValueError(f"{loss}: student {field} {tuple(s_logits.shape)} and teacher {field} "
                         f"{tuple(t_logits.shape)} differ; both must be (B, G, M) over the same vocabulary")
    log_s = F.log_softmax(s_logits.float(), dim=-1)                 # (B, G, M), fp32 even under autocast
    log_t = F.log_softmax(t_logits.detach().float(), dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum(-1).mean()


def action_kl_loss(s_logits: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor:
    """token_kl_loss over the action decoder's scores of each token's shape code."""
    return token_kl_loss(s_logits, t_logits)


class TokenKL(nn.Module):
    """The module of a per-token KL over one (B, G, M) output field of both sides; a subclass names the
    loss and the field it reads."""
    name, field = "", ""

    def __init__(self, cfg, student_dims=None, teacher_dims=None):
        super().__init__()
        self.weight = float(cfg.weight)

    def forward(self, s_out, t_out):
        return {self.name: self.weight * token_kl_loss(s_out.get(self.field), t_out.get(self.field),
                                                       self.name, self.field)}


class ActionKL(TokenKL):
    requires = ("action_logits",)
    name, field = "action_kl", "action_logits"
