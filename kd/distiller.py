"""Tasks the engine trains: a teacher on its own losses, and a student distilled from a teacher.

Student total (METHOD.md §6):
    (1 - alpha) * L_ce + alpha * sum_i c_i * L_kd,i + lambda_align * L_align + sum_other lambda * L
where L_kd,i sums the KD losses bound to knowledge source i (`kd.<loss>.source`), c_i are the
fixed source weights or the mGLW dynamic coefficients, and "other" terms are unbound KD losses
and the student's own auxiliary losses (the VQShape student's x, s, vq).
"""
from __future__ import annotations

import copy
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

from kd.contract import TOKEN_LOSSES, loss_teacher
from kd.losses import LOSSES, build_loss
from kd.outputs import Outputs
from kd.workspace import Workspace, dynamic_coefficients
from students.adapter import SubActionHead

KD_LOSSES = tuple(LOSSES)            # every KD loss the config can switch on


# VQShape's own terms: the self-supervised phase of a teacher trains on these only.

def own_losses(model: nn.Module, out: Outputs, batch: Dict) -> Dict[str, torch.Tensor]:
    """A model's own losses on a batch; on a mixed batch (engine.mix_batch) each term is
    lam * term(y) + (1 - lam) * term(y[perm]): the mixup cross-entropy, and unchanged for the terms
    that do not read the labels."""
    first = model.losses(out, batch["y"])
    if "mix" not in batch:
        return first
    y_b, lam = batch["mix"]
    second = model.losses(out, y_b)
    return {k: lam * v + (1 - lam) * second[k] for k, v in first.items()}


class OwnLossTask(nn.Module):
    """The plain trainer's task: a model that trains on its own losses (a teacher, or the student
    trained alone as the baseline); no teacher, no KD.
    self_supervised: only the terms that need no label (a VQShape teacher's first phase:
    x, vq, s, div, shape)."""

    def __init__(self, model: nn.Module, self_supervised: bool = False):
        super().__init__()
        self.model, self.self_supervised = model, self_supervised

    def forward(self, batch: Dict, teacher_out: Optional[Outputs] = None) -> Tuple[Dict, Dict]:
        out = self.model.fit_forward(batch)
        if self.self_supervised:
            return self.model.losses(out, batch["y"], supervised=False), {}
        return own_losses(self.model, out, batch), {}

    def predict(self, batch: Dict) -> torch.Tensor:
        return self.model.predict(batch["x"])


class TeacherGroup(nn.Module):
    """The main teacher plus further frozen teachers (kd.extra_teachers). `teach` returns the main
    teacher's outputs, with each extra teacher's in `extra[name]` (knowledge sources, read as '<name>/<field>')."""

    def __init__(self, main: nn.Module, extras: Dict[str, nn.Module]):
        super().__init__()
        self.main, self.extras = main, nn.ModuleDict(extras)

    def teach(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> Outputs:
        out = self.main.teach(x, y)
        out.extra = {name: teacher.teach(x, y) for name, teacher in self.extras.items()}
        return out

    def train(self, mode: bool = True):
        return super().train(False)                                          # frozen: always eval


class FrozenTokenSpace(nn.Module):
    """The teacher's frozen shape codebook and action decoder, for students without their own
    (CNN students reach them through a token adapter)."""

    def __init__(self, teacher: nn.Module):
        super().__init__()
        self.codebook = copy.deepcopy(teacher.codebook).requires_grad_(False)
        self.action_decoder = copy.deepcopy(teacher.action_decoder).requires_grad_(False) \
            if teacher.num_actions else None

    def forward(self, out: Outputs) -> None:
        """Fill a CNN student's `code_dist` (and `action_logits`) from the attributes its adapter made."""
        z_e = out.attr["z_e"]                                                # (B, G, dc)
        dist = self.codebook.distances(z_e.flatten(0, 1))                    # (B*G, K)
        out.code_dist = dist.view(*z_e.shape[:2], -1)
        if self.action_decoder is not None:
            e = self.codebook.weight[dist.argmin(-1)].view_as(z_e)
            out.action_logits = self.action_decoder(z_e + (e - z_e).detach())  # straight-through

    def train(self, mode: bool = True):
        return super().train(False)                                          # frozen: always eval


def feature_dims(out: Outputs) -> Dict[str, int]:
    """{"feature_dim": D, "feature_len": L} of a model's features (what a feature hint projects)."""
    return {} if out.features is None else {"feature_dim": out.features.shape[1], "feature_len": out.features.shape[2]}


def enabled_losses(kd_cfg) -> Dict:
    return {name: kd_cfg[name] for name in KD_LOSSES if kd_cfg[name].weight > 0}


class Distiller(nn.Module):
    """Student + KD losses (+ token adapter, frozen token space, workspace). The teacher is
    *not* a submodule: the engine passes its outputs in, so it never reaches the optimizer.
    Only distillation runs here; the student trained alone uses OwnLossTask."""

    def __init__(self, kd_cfg, student: nn.Module, teacher: nn.Module, probe: Dict):
        super().__init__()
        self.kd_cfg, self.student = kd_cfg, student
        s_out, t_out = probe["student"], probe["teacher"]
        self.loss_cfg = enabled_losses(kd_cfg)
        self.adapter = self.tokens = self.sub_head = None
        # every source and loss was checked against the models' declared outputs at config load
        # (kd/contract.py); a CNN student reaches the teacher's token space through an adapter
        if any(n in self.loss_cfg for n in TOKEN_LOSSES) and s_out.attr is None:
            G, dc = t_out.attr["z_e"].shape[1:]
            self.adapter = student.token_adapter(G, dc)
            self.tokens = FrozenTokenSpace(teacher)
            if "sub_kl" in self.loss_cfg:   # the teacher's label-free sub-action scores, read off the adapter tokens
                self.sub_head = SubActionHead(self.adapter.dim, t_out.sub_logits.shape[-1], teacher.num_channels,
                                              kd_cfg.sub_kl.context)
        # a loss bound to a source reads the teacher that gives the source's tokens (None: the main one)
        self.teacher_of = {n: loss_teacher(kd_cfg, n) for n in self.loss_cfg}
        self.losses = nn.ModuleDict({n: build_loss(n, c, feature_dims(s_out), feature_dims(self.of(t_out, n)))
                                     for n, c in self.loss_cfg.items()})
        self.source_names = [s.name for s in kd_cfg.sources]
        self.workspace = self.build_workspace(s_out, t_out) if kd_cfg.workspace.enabled else None

    def build_workspace(self, s_out: Outputs, t_out: Outputs) -> Workspace:
        specs = [(src.name, *t_out.get(src.tokens).shape[1:]) for src in self.kd_cfg.sources]
        D, L = s_out.features.shape[1:]
        return Workspace(self.kd_cfg.workspace, specs, width=D, length=L)

    # -- forward ---------------------------------------------------------------------------
    def student_forward(self, x: torch.Tensor, sources: Optional[Dict]) -> Tuple[Outputs, Dict]:
        info: Dict = {}

        def mix(feats):
            nonlocal info
            feats, info = self.workspace(feats, sources)
            return feats

        s_out = self.student(x, mix=mix if self.workspace is not None else None)
        if self.adapter is not None:
            s_out.attr = self.adapter(s_out.features)
            self.tokens(s_out)
            if self.sub_head is not None:
                s_out.sub_logits = self.sub_head(s_out.attr["tokens"])         # (B, G, M)
        return s_out, info

    def sources_for_step(self, t_out: Optional[Outputs]) -> Optional[Dict]:
        """Teacher tokens for the workspace, or None on prior-only steps (and always at eval)."""
        if self.workspace is None or t_out is None or not self.training:
            return None
        if torch.rand(()) < self.kd_cfg.workspace.prior_prob:
            return None
        return {s.name: t_out.get(s.tokens) for s in self.kd_cfg.sources}

    def coefficients(self, info: Dict) -> Tuple[Dict[str, torch.Tensor], Dict[str, float], Optional[torch.Tensor]]:
        """-> ({source: c_i}, logs, L_align or None)."""
        logs, align = {}, None
        if self.workspace is not None and info.get("kis"):
            align, d = self.workspace.alignment(info)
            for n, v in zip(self.workspace.names, d):
                logs[f"dist_{n}"] = float(v.detach())
            if self.kd_cfg.coef == "dynamic":
                c = dynamic_coefficients(d)
                self.workspace.track_coefficients_(c)
        if self.kd_cfg.coef == "dynamic":
            c = c if align is not None else self.workspace.coef_ema
            coef = {n: c[i] for i, n in enumerate(self.source_names)}
        else:
            coef = {s.name: torch.tensor(float(s.fixed_weight)) for s in self.kd_cfg.sources}
        logs.update({f"coef_{n}": float(v) for n, v in coef.items()})
        return coef, logs, align

    def forward(self, batch: Dict, t_out: Optional[Outputs] = None) -> Tuple[Dict, Dict]:
        x = batch["x"]
        s_out, info = self.student_forward(x, self.sources_for_step(t_out))
        own = own_losses(self.student, s_out, batch)                         # ce (+ x, s, vq for VQShape)
        alpha = self.kd_cfg.alpha
        terms = {"ce": (1 - alpha) * own.pop("ce"), **own}
        coef, logs, align = self.coefficients(info)
        for name, loss in self.losses.items():
            value = loss(s_out, self.of(t_out, name))[name]
            src = self.loss_cfg[name].source
            terms[name] = alpha * coef[src].to(value) * value if src is not None else value
        if align is not None:
            terms["align"] = self.kd_cfg.workspace.lambda_align * align
        return terms, logs

    def of(self, t_out: Outputs, loss: str) -> Outputs:
        """The outputs of the teacher `loss` reads."""
        return t_out if self.teacher_of[loss] is None else t_out.extra[self.teacher_of[loss]]

    def has_action_tokens(self) -> bool:
        """True when the student's tokens carry sub-action logits (own or through the adapter)."""
        return self.student.num_actions > 0 or (self.tokens is not None and self.tokens.action_decoder is not None)

    # -- inference -------------------------------------------------------------------------
    def predict(self, batch: Dict) -> torch.Tensor:
        """Signal only: no teacher, no text; workspace slots are the learned prior."""
        return self.student_forward(batch["x"], None)[0].logits
