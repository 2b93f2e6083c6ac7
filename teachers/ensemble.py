"""A teacher made of several CNNs of one architecture (`teacher.members` > 1): a deep ensemble.

Each member starts from its own random initialisation and is trained on its own cross-entropy (the
members share batches, not parameters or gradients: the loss is the mean of the members' losses,
so member i's gradient is exactly that of its own CE divided by the number of members). The
ensemble teaches with its averaged class probabilities: its logits are log(mean_i softmax(s_i)),
log-probabilities, so softmax(logits) is the averaged distribution and the logit KD's softened
target at temperature T is that of these log-probabilities. Its features are the members' feature
maps concatenated along channels (what a FitNet hint or a workspace source would read).
Ensembles of independently initialised networks are better calibrated and more accurate than their
members (Lakshminarayanan et al., 2017), and distilling an ensemble into one network keeps part of
that gain (Hinton et al., 2015).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from kd.outputs import Outputs


class Ensemble(nn.Module):
    """members: CNNs with the CNN teacher protocol (students/cnn.py), same architecture."""

    OUTPUTS = frozenset({"logits", "features"})
    TEACH_OUTPUTS = OUTPUTS | {"feature_tokens"}
    num_actions = 0

    def __init__(self, members: List[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)
        self.num_classes = members[0].num_classes
        self.feature_dim = sum(m.feature_dim for m in members)

    @staticmethod
    def combine(member_logits: torch.Tensor) -> torch.Tensor:
        """(K, B, n_cls) member logits -> (B, n_cls) log of the mean class probabilities."""
        log_p = torch.log_softmax(member_logits.float(), dim=-1)
        return torch.logsumexp(log_p, dim=0) - math.log(member_logits.shape[0])

    def forward(self, x: torch.Tensor, mix=None) -> Outputs:
        """The ensemble's outputs, each member's own under extra["member<i>"] (what `losses` reads)."""
        if mix is not None:
            raise ValueError("an ensemble teacher is not a student: it has no workspace read-out")
        outs = [m(x) for m in self.members]
        return Outputs(logits=self.combine(torch.stack([o.logits for o in outs])),
                       features=torch.cat([o.features for o in outs], dim=1),
                       extra={f"member{i}": o for i, o in enumerate(outs)})

    # -- the engine's protocol -------------------------------------------------------------
    def fit_forward(self, batch: Dict[str, torch.Tensor]) -> Outputs:
        return self(batch["x"])

    def losses(self, out: Outputs, y: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The mean of the members' own cross-entropies (not the CE of the averaged prediction, which
        would couple the members and let one lean on the others)."""
        members = [m.losses(o, y)["ce"] for m, o in zip(self.members, out.extra.values())]
        return {"ce": torch.stack(members).mean()}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self(x).logits

    def teach(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> Outputs:
        out = self(x)
        out.extra = {}                                                       # members are not sources
        out.feature_tokens = out.features.transpose(1, 2)                   # (B, L, K*D)
        return out
