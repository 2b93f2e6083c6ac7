"""Similarity-preserving KD (Tung & Mori, https://arxiv.org/abs/1907.09682)."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def sp_loss(s_feat: torch.Tensor, t_feat: torch.Tensor) -> torch.Tensor:
    """||G_s - G_t||_F^2 / B^2 with G = F F^T on features flattened to (B, -1), rows L2-normalised.
    Student and teacher may differ in every dimension but B. The teacher is detached."""
    B = s_feat.shape[0]
    if t_feat.shape[0] != B:
        raise ValueError(f"sp: student batch {B} and teacher batch {t_feat.shape[0]} differ")
    with torch.autocast(device_type=s_feat.device.type, enabled=False):     # the Gram matmul in fp32
        s, t = s_feat.float().reshape(B, -1), t_feat.detach().float().reshape(B, -1)
        g_s = F.normalize(s @ s.t(), dim=1)                                 # (B, B)
        g_t = F.normalize(t @ t.t(), dim=1)
        return (g_s - g_t).pow(2).sum() / (B * B)


class SimilarityPreserving(nn.Module):
    requires = ("features",)

    def __init__(self, cfg, student_dims=None, teacher_dims=None):
        super().__init__()
        self.weight = float(cfg.weight)

    def forward(self, s_out, t_out):
        return {"sp": self.weight * sp_loss(s_out.features, t_out.features)}
