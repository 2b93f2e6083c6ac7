"""Attribute KD: MSE between student and teacher VQShape attribute tokens (z_e, mu, sigma, t, l).

The teacher's attributes are computed with its class text (privileged information)."""
from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

ATTRIBUTES = ("z_e", "mu", "sigma", "t", "l")


def attr_loss(s_attr: Dict[str, torch.Tensor], t_attr: Dict[str, torch.Tensor],
              weights: Dict[str, float]) -> torch.Tensor:
    """sum_a weights[a] * MSE(s[a], t[a]); a weight of 0 leaves the attribute out."""
    unknown = set(weights) - set(ATTRIBUTES)
    if unknown:
        raise ValueError(f"kd.attr.attr_weights has unknown attributes {sorted(unknown)}; valid: {list(ATTRIBUTES)}")
    terms = [w * F.mse_loss(s_attr[a].float(), t_attr[a].detach().float()) for a, w in weights.items() if w]
    return torch.stack(terms).sum() if terms else s_attr["z_e"].sum() * 0.0


class AttrKD(nn.Module):
    requires = ("attr",)

    def __init__(self, cfg, student_dims=None, teacher_dims=None):
        super().__init__()
        self.weight, self.attr_weights = cfg.weight, dict(cfg.attr_weights)
        attr_loss({a: torch.zeros(1) for a in ATTRIBUTES}, {a: torch.zeros(1) for a in ATTRIBUTES},
                  self.attr_weights)   # reject unknown attribute names at construction

    def forward(self, s_out, t_out):
        return {"attr": self.weight * attr_loss(s_out["attr"], t_out["attr"], self.attr_weights)}
