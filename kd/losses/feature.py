"""FitNets hint (https://arxiv.org/abs/1412.6550): MSE between projected student features and
the teacher's, with the student's length resampled to the teacher's."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def feature_hint_loss(s_proj: torch.Tensor, t_feat: torch.Tensor) -> torch.Tensor:
    """s_proj (B, D_t, L_s) already projected; t_feat (B, D_t, L_t)."""
    if s_proj.shape[-1] != t_feat.shape[-1]:
        s_proj = F.interpolate(s_proj, size=t_feat.shape[-1], mode="linear", align_corners=False)
    return F.mse_loss(s_proj.float(), t_feat.detach().float())


class FeatureHint(nn.Module):
    requires = ("features",)

    def __init__(self, cfg, student_dims, teacher_dims):
        super().__init__()
        if "feature_dim" not in teacher_dims:
            raise ValueError("kd.feature needs teacher features; this teacher has none")
        self.weight = cfg.weight
        self.proj = nn.Conv1d(student_dims["feature_dim"], teacher_dims["feature_dim"], 1)

    def forward(self, s_out, t_out):
        return {"feature": self.weight * feature_hint_loss(self.proj(s_out["features"]), t_out["features"])}
