"""Hinton KD (https://arxiv.org/abs/1503.02531): T^2 * KL(softmax(t/T) || softmax(s/T))."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def logit_kd_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, T: float) -> torch.Tensor:
    """KL summed over classes, mean over the batch; logits (B, n_cls). The teacher is a fixed target
    (detached). T^2 keeps the gradient scale comparable across temperatures."""
    if s_logits.shape != t_logits.shape:
        raise ValueError(f"logit_kd: student logits {tuple(s_logits.shape)} and teacher logits "
                         f"{tuple(t_logits.shape)} differ; both must be (B, n_cls) over the same classes")
    log_s = F.log_softmax(s_logits.float() / T, dim=-1)            # fp32 even under autocast
    log_t = F.log_softmax(t_logits.detach().float() / T, dim=-1)
    return T * T * F.kl_div(log_s, log_t, reduction="batchmean", log_target=True)


class LogitKD(nn.Module):
    requires = ("logits",)

    def __init__(self, cfg, student_dims=None, teacher_dims=None):
        super().__init__()
        if cfg.temperature <= 0:
            raise ValueError(f"kd.logit_kd.temperature={cfg.temperature} must be > 0")
        self.weight, self.T = float(cfg.weight), float(cfg.temperature)

    def forward(self, s_out, t_out):
        return {"logit_kd": self.weight * logit_kd_loss(s_out.logits, t_out.logits, self.T)}
