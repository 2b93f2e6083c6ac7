"""Code KD: KL between soft assignments of teacher and student tokens over the frozen shape codebook."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def code_kl_loss(s_dist: torch.Tensor, t_dist: torch.Tensor, tau: float) -> torch.Tensor:
    """KL(softmin(t_dist/tau) || softmin(s_dist/tau)) over codes, mean over tokens; dist (B, G, K)."""
    log_s = F.log_softmax(-s_dist.float() / tau, dim=-1)
    log_t = F.log_softmax(-t_dist.detach().float() / tau, dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum(-1).mean()


class CodeKL(nn.Module):
    requires = ("code_dist",)

    def __init__(self, cfg, student_dims=None, teacher_dims=None):
        super().__init__()
        self.weight, self.tau = cfg.weight, cfg.temperature

    def forward(self, s_out, t_out):
        return {"code_kl": self.weight * code_kl_loss(s_out["code_dist"], t_out["code_dist"], self.tau)}
