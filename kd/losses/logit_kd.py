"""Hinton KD (https://arxiv.org/abs/1503.02531): T^2 * KL(softmax(t/T) || softmax(s/T))."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def logit_kd_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, T: float) -> torch.Tensor:
    """KL summed over classes, mean over the batch; T^2 keeps gradients comparable across T."""
    log_s = F.log_softmax(s_logits.float() / T, dim=-1)
    log_t = F.log_softmax(t_logits.detach().float() / T, dim=-1)
    return T * T * F.kl_div(log_s, log_t, reduction="batchmean", log_target=True)


class LogitKD(nn.Module):
    requires = ("logits",)

    def __init__(self, cfg, student_dims=None, teacher_dims=None):
        super().__init__()
        self.weight, self.T = cfg.weight, cfg.temperature

    def forward(self, s_out, t_out):
        return {"logit_kd": self.weight * logit_kd_loss(s_out["logits"], t_out["logits"], self.T)}
