"""FitNets hint (https://arxiv.org/abs/1412.6550): MSE between projected student features and
the teacher's, with the student's length resampled to the teacher's."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def feature_hint_loss(s_proj: torch.Tensor, t_feat: torch.Tensor) -> torch.Tensor:
    """s_proj (B, D_t, L_s) already projected; t_feat (B, D_t, L_t). The teacher is detached."""
    if s_proj.shape[:2] != t_feat.shape[:2]:
        raise ValueError(f"feature: projected student features {tuple(s_proj.shape)} and teacher features "
                         f"{tuple(t_feat.shape)} must agree in (B, D_t)")
    with torch.autocast(device_type=s_proj.device.type, enabled=False):     # fp32 even under autocast
        s, t = s_proj.float(), t_feat.detach().float()
        if s.shape[-1] != t.shape[-1]:
            s = F.interpolate(s, size=t.shape[-1], mode="linear", align_corners=False)   # (B, D_t, L_t)
        return F.mse_loss(s, t)


class FeatureHint(nn.Module):
    requires = ("features",)

    def __init__(self, cfg, student_dims, teacher_dims):
        super().__init__()
        for side, dims in (("student", student_dims), ("teacher", teacher_dims)):
            if "feature_dim" not in dims:
                raise ValueError(f"kd.feature needs the {side}'s feature_dim (it has {sorted(dims)}); "
                                 f"this {side} exposes no features — set kd.feature.weight=0")
        self.weight = float(cfg.weight)
        self.proj = nn.Conv1d(student_dims["feature_dim"], teacher_dims["feature_dim"], 1)   # learned regressor

    def forward(self, s_out, t_out):
        return {"feature": self.weight * feature_hint_loss(self.proj(s_out.features), t_out.features)}
