"""Signal-only VQShape student that reuses the teacher's frozen shape codebook, shape decoder
and action decoder (METHOD.md §5), so its tokens live in the teacher's shape space."""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn as nn

from kd.layers import MLP
from kd.outputs import Outputs
from kd.vqshape import VQShape, fold_tokens

SHARED = ("dim_code", "num_code", "len_s", "num_token", "len_input")


class VQShapeStudent(VQShape):
    """A smaller VQShape; `adopt(teacher)` copies and freezes the shared parts."""

    # the Outputs fields forward fills (kd/contract.py); + action_logits with the teacher's action decoder
    OUTPUTS = frozenset({"logits", "features", "attr", "code_dist"})

    def __init__(self, cfg, num_channels: int, num_classes: int, num_actions: int = 0, action_hidden: int = 64,
                 freeze_shared: bool = True):
        super().__init__(cfg, num_channels, num_classes)
        self.num_actions = num_actions          # the teacher's sub-action vocabulary (0: a signal-only teacher)
        self.action_decoder = MLP(cfg.dim_code, num_actions, action_hidden) if num_actions else None
        self.freeze_shared = freeze_shared      # False: a no-teacher baseline learns its own codebook
        if freeze_shared:
            for part in self.frozen_parts().values():
                part.requires_grad_(False)

    def frozen_parts(self) -> Dict[str, nn.Module]:
        parts = {"codebook": self.codebook, "shape_decoder": self.shape_decoder}
        if self.action_decoder is not None:
            parts["action_decoder"] = self.action_decoder
        return parts

    def check_fits(self, teacher: nn.Module) -> None:
        """Raise, naming every key that differs, unless this student can share the teacher's parts."""
        if not isinstance(teacher, VQShape):
            raise ValueError(f"vqshape_student needs a VQShape teacher (teacher.arch=vqshape), got {type(teacher).__name__}")
        diffs = [f"student.vqshape.{k}={getattr(self.cfg, k)} vs teacher {getattr(teacher.cfg, k)}"
                 for k in SHARED if getattr(self.cfg, k) != getattr(teacher.cfg, k)]
        if self.num_channels != teacher.num_channels:
            diffs.append(f"channels: data has {self.num_channels}, teacher was trained on {teacher.num_channels}")
        if bool(self.num_actions) != bool(teacher.num_actions):
            diffs.append("action decoder: the teacher " + ("has" if teacher.num_actions else "has no") +
                         " text guidance but the student was built " + ("without" if teacher.num_actions else "with") + " one")
        elif self.num_actions != teacher.num_actions:
            diffs.append(f"sub-action vocabulary: teacher M={teacher.num_actions}, student M={self.num_actions}")
        if diffs:
            raise ValueError("vqshape_student does not fit the teacher checkpoint: " + "; ".join(diffs))

    @torch.no_grad()
    def adopt(self, teacher: nn.Module) -> None:
        """Copy the teacher's frozen parts into this student (they stay frozen)."""
        self.check_fits(teacher)
        for name, part in self.frozen_parts().items():
            part.load_state_dict(getattr(teacher, name).state_dict())
            part.requires_grad_(False)

    def forward(self, x: torch.Tensor, reconstruct: bool = True, mix=None) -> Outputs:
        """Signal only (no labels, no text); the VQShape forward's own tensors go to `own`, what its
        losses read."""
        own = super().forward(x, None, "vocab", reconstruct, mix)
        B = x.shape[0]
        return Outputs(logits=own["logits"], features=own["features"],
                       attr={k: fold_tokens(own[k], B) for k in ("z_e", "mu", "sigma", "t", "l")},
                       code_dist=fold_tokens(own["code_dist"], B),
                       action_logits=None if self.action_decoder is None else
                       fold_tokens(self.action_decoder(own["z_q"]), B), own=own)

    def fit_forward(self, batch: Dict[str, torch.Tensor]) -> Outputs:
        return self(batch["x"])

    def losses(self, out: Outputs, y: torch.Tensor, supervised: bool = True) -> Dict[str, torch.Tensor]:
        return super().losses(out.own, y, supervised)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self(x, reconstruct=False).logits

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_shared:
            for part in self.frozen_parts().values():   # frozen parts never leave eval mode
                part.eval()
        return self
