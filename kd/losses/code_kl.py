"""Code KD: KL between soft assignments of teacher and student tokens over the frozen shape codebook."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def code_kl_loss(s_dist: torch.Tensor, t_dist: torch.Tensor, tau: float) -> torch.Tensor:
    """KL(softmin(t_dist/tau) || softmin(s_dist/tau)) over the K codes, mean over the B*G tokens.
    dist (B, G, K): squared distances to the codebook. softmin(d) = softmax(-d); the teacher is detached."""
    if s_dist.shape != t_dist.shape:
        raise ValueError(f"code_kl: student code_dist {tuple(s_dist.shape)} and teacher code_dist "
                         f"{tuple(t_dist.shape)} differ; both must be (B, G, K) over the same codebook")
    # one scaling pass per side and a fused KL: 1.2-1.3x faster forward+backward than negate, divide and an
    # explicit p_t * (log p_t - log p_s), same values (experiments/results/bench_code_kl.txt)
    log_s = F.log_softmax(s_dist.float() * (-1.0 / tau), dim=-1)   # (B, G, K), fp32 even under autocast
    log_t = F.log_softmax(t_dist.detach().float() * (-1.0 / tau), dim=-1)
    return F.kl_div(log_s, log_t, reduction="sum", log_target=True) / (log_s.numel() // log_s.shape[-1])


class CodeKL(nn.Module):
    requires = ("code_dist",)

    def __init__(self, cfg, student_dims=None, teacher_dims=None):
        super().__init__()
        if cfg.temperature <= 0:
            raise ValueError(f"kd.code_kl.temperature={cfg.temperature} (tau) must be > 0")
        self.weight, self.tau = float(cfg.weight), float(cfg.temperature)

    def forward(self, s_out, t_out):
        return {"code_kl": self.weight * code_kl_loss(s_out.code_dist, t_out.code_dist, self.tau)}
