"""Attribute KD: MSE between student and teacher VQShape attribute tokens (z_e, mu, sigma, t, l).

The teacher's attributes are computed with its class text (privileged information)."""
from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

from kd.config import ATTRIBUTES


def check_attr_weights(weights: Dict[str, float]) -> None:
    unknown = sorted(set(weights) - set(ATTRIBUTES))
    if unknown:
        raise ValueError(f"kd.attr.attr_weights has unknown attributes {unknown}; valid: {list(ATTRIBUTES)}")


def attr_loss(s_attr: Dict[str, torch.Tensor], t_attr: Dict[str, torch.Tensor],
              weights: Dict[str, float]) -> torch.Tensor:
    """sum_a weights[a] * MSE(s[a], t[a]); a weight of 0 leaves the attribute out entirely (not even read).
    z_e (B, G, dc); mu, sigma, t, l (B, G, 1). The teacher is detached."""
    check_attr_weights(weights)
    total = torch.zeros((), device=next(iter(s_attr.values())).device)   # fp32 scalar
    for a, w in weights.items():
        if not w:
            continue
        for side, attr in (("student", s_attr), ("teacher", t_attr)):
            if a not in attr:
                raise ValueError(f"kd.attr: the {side} attributes lack {a!r} (have {sorted(attr)}); "
                                 f"set kd.attr.attr_weights.{a}=0")
        if s_attr[a].shape != t_attr[a].shape:
            raise ValueError(f"kd.attr: student {a} {tuple(s_attr[a].shape)} and teacher {a} "
                             f"{tuple(t_attr[a].shape)} differ; the student tokens must match the teacher grid")
        total = total + w * F.mse_loss(s_attr[a].float(), t_attr[a].detach().float())
    return total


class AttrKD(nn.Module):
    requires = ("attr",)

    def __init__(self, cfg, student_dims=None, teacher_dims=None):
        super().__init__()
        self.weight, self.attr_weights = float(cfg.weight), {k: float(v) for k, v in cfg.attr_weights.items()}
        check_attr_weights(self.attr_weights)          # a typo fails at construction, not at step 1
        if not any(self.attr_weights.values()):
            raise ValueError("kd.attr.attr_weights are all 0, so kd.attr would add nothing; "
                             "set kd.attr.weight=0 to switch it off")

    def forward(self, s_out, t_out):
        return {"attr": self.weight * attr_loss(s_out.attr, t_out.attr, self.attr_weights)}
