"""What a model gives distillation: one dataclass, one meaning per field.

A student's `forward` and a teacher's `teach` return `Outputs`; the KD losses, the workspace and the
teacher cache read its fields by name. A field a model does not provide is None. Each model class
declares the fields it fills (`OUTPUTS` for a student's forward, `TEACH_OUTPUTS` for `teach`), and
the config loader holds every KD loss and knowledge source against those declarations
(kd/contract.py). B: windows; G = C*N: a VQShape window's tokens (C channels x N tokens).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Dict, FrozenSet, Optional

import torch

Tensor = torch.Tensor


@dataclass
class Outputs:
    logits: Tensor                                 # (B, classes) class scores
    # (B, D, L) what the feature losses compare and the workspace mixes: a CNN's last feature map; a
    # VQShape student's tokens before its attribute heads (what its workspace read-out rewrites); a
    # VQShape teacher's re-encoded shape tokens (shape_tokens, transposed)
    features: Optional[Tensor] = None
    attr: Optional[Dict[str, Tensor]] = None       # {z_e (B, G, dc), mu, sigma, t, l (B, G, 1)}: token attributes
    code_dist: Optional[Tensor] = None             # (B, G, K) squared distances of z_e to the frozen shape codebook
    code_idx: Optional[Tensor] = None              # (B, G) each token's shape code
    action_logits: Optional[Tensor] = None         # (B, G, M) the frozen action decoder's scores of each token's code
    # (B, G, M) label-free sub-action scores of each token over the whole vocabulary: an ordered-alignment
    # teacher's, or a CNN student's sub-action head on its adapter tokens
    sub_logits: Optional[Tensor] = None
    shape_tokens: Optional[Tensor] = None          # (B, G, d) re-encoded shape tokens (a knowledge source)
    action_tokens: Optional[Tensor] = None         # (B, K_pad, d) quantised text-query tokens, zeros at padding (a source)
    feature_tokens: Optional[Tensor] = None        # (B, L, D) a CNN teacher's feature map as tokens (a source)
    # further teachers' outputs by teacher name (kd.extra_teachers); '<name>/<field>' reads one
    extra: Dict[str, "Outputs"] = field(default_factory=dict)
    # what only the model's own losses read (a VQShape student's reconstructions, codebook terms, ...)
    own: Dict[str, Tensor] = field(default_factory=dict, repr=False)

    def provided(self) -> FrozenSet[str]:
        """The KD fields this output fills, with the extra teachers' as '<name>/<field>'."""
        return frozenset(f.name for f in fields(self) if f.name not in ("extra", "own")
                         and getattr(self, f.name) is not None) | \
            frozenset(f"{n}/{k}" for n, o in self.extra.items() for k in o.provided())

    def get(self, name: str) -> Tensor:
        """A field, or an extra teacher's field as '<name>/<field>' (a knowledge source)."""
        if "/" in name:
            teacher, key = name.split("/", 1)
            return self.extra[teacher].get(key)
        value = getattr(self, name)
        if value is None:
            raise KeyError(f"this model's outputs have no {name!r} (it provides {sorted(self.provided())})")
        return value

    def tensors(self) -> Dict[str, Tensor]:
        """Every KD tensor by key ('attr.z_e' for an attribute, '<name>/<field>' for an extra teacher);
        `from_tensors` inverts it. The model-private `own` tensors are left out."""
        out = {f"{n}/{k}": v for n, o in self.extra.items() for k, v in o.tensors().items()}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("extra", "own") or v is None:
                continue
            out.update({f"attr.{a}": t for a, t in v.items()} if f.name == "attr" else {f.name: v})
        return out

    @classmethod
    def from_tensors(cls, d: Dict[str, Tensor]) -> "Outputs":
        plain = {k: v for k, v in d.items() if "." not in k and "/" not in k}
        attr = {k.split(".", 1)[1]: v for k, v in d.items() if k.startswith("attr.")}   # not an extra's attr
        names = {k.split("/", 1)[0] for k in d if "/" in k}
        extra = {n: cls.from_tensors({k.split("/", 1)[1]: v for k, v in d.items() if k.startswith(n + "/")})
                 for n in names}
        return cls(**plain, attr=attr or None, extra=extra)


FIELDS = tuple(f.name for f in fields(Outputs) if f.name not in ("extra", "own"))
# Outputs shaped (B, tokens, d): token sequences a workspace knowledge source can read.
TOKEN_OUTPUTS = ("shape_tokens", "action_tokens", "feature_tokens")


class Classifier:
    """The engine's protocol for a model trained on its cross-entropy alone whose `forward(x)` returns
    Outputs with logits and features (B, D, L) (the CNN students and CNN teachers): as a
    teacher it teaches its features as tokens (B, L, D), a workspace source; labels are unused."""

    def fit_forward(self, batch: Dict[str, Tensor]) -> Outputs:
        return self(batch["x"])

    def losses(self, out: Outputs, y: Tensor) -> Dict[str, Tensor]:
        return {"ce": torch.nn.functional.cross_entropy(out.logits, y)}

    def predict(self, x: Tensor) -> Tensor:
        return self(x).logits

    def teach(self, x: Tensor, y: Optional[Tensor] = None) -> Outputs:
        out = self(x)
        out.feature_tokens = out.features.transpose(1, 2)
        return out
