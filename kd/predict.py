"""Signal-only inference with an exported student: no teacher, no text.

    python -m kd.predict --model runs/default/student --npz windows.npz [--layout NTC]

Windows are resampled to the student's length; with `y` in the file, accuracy and macro-F1
are printed too.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import List, Optional, Union

import numpy as np
import torch
import torch.nn as nn

from kd.checkpoint import CheckpointError, load_weights, read_checkpoint
from kd.config import LAST_COMPATIBLE_COMMIT, config_from_dict
from kd.data import resample
from kd.metrics import classification_report
from kd.workspace import Workspace
from students import build_student
from students.fused import FUSABLE, FusedCNN


class Predictor(nn.Module):
    """An exported student (+ its workspace read-out with the learned slot prior).

    fused: run the inference form (students/fused.py: BatchNorm folded, channels-last convs,
    the read-out's constants precomputed; equal to the eager model within float rounding).
    None = fused for CNN students, eager for the VQShape student (which has no fused form).
    """

    def __init__(self, path: Union[str, Path], fused: Optional[bool] = None):
        super().__init__()
        state, meta = read_checkpoint(path)
        if meta.get("role") not in ("student", "baseline"):
            raise CheckpointError(f"{path} is a {meta.get('role')!r} checkpoint; give an exported student "
                                  f"(<run_dir>/student or <run_dir>/baseline)")
        cfg = config_from_dict(meta["config"])
        self.meta, self.class_names = meta, list(meta["class_names"])
        self.num_channels, self.length = meta["num_channels"], meta["length"]
        self.model = nn.ModuleDict({"student": build_student(
            meta["arch"], cfg.student.cnn, cfg.student.vqshape, self.num_channels, len(self.class_names),
            meta["num_actions"], freeze_shared=meta["role"] == "student")})
        if "workspace" not in meta:
            raise CheckpointError(f"{path} was exported before meta.json held the workspace's constructor "
                                  f"arguments: re-export it with commit {LAST_COMPATIBLE_COMMIT} "
                                  f"(python -m kd.predict --upgrade {path}) or retrain it")
        if meta["workspace"]:
            self.model["workspace"] = Workspace(cfg.kd.workspace, **meta["workspace"])
        load_weights(self.model, state, str(path))
        self.eval()
        cnn = isinstance(self.model["student"], FUSABLE)
        if fused and not cnn:
            raise ValueError(f"fused=True: the {meta['arch']!r} student has no fused form (use fused=None or False)")
        self.fused = None
        if cnn and fused is not False:
            readout = self.model["workspace"].prior_readout() if "workspace" in self.model else None
            self.fused = FusedCNN(self.model["student"], readout)

    def prepare(self, x: Union[np.ndarray, torch.Tensor], layout: str = "NCT") -> torch.Tensor:
        """Array [N, C, T] (or [N, T, C] with layout='NTC') -> float32 [N, C, length]."""
        x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
        if x.dim() != 3:
            raise ValueError(f"windows must be a 3-D array [N, C, T] or [N, T, C], got shape {list(x.shape)}")
        if layout == "NTC":
            x = x.transpose(1, 2)
        if x.shape[1] != self.num_channels:
            raise ValueError(f"windows have {x.shape[1]} channels, the student expects {self.num_channels} "
                             f"(check --layout)")
        return resample(x, self.length)

    @torch.no_grad()
    def logits(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        if self.fused is not None:
            return torch.cat([self.fused(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
        ws = self.model["workspace"] if "workspace" in self.model else None
        mix = (lambda f: ws(f, None)[0]) if ws is not None else None
        return torch.cat([self.model["student"](x[i:i + batch_size], mix=mix).logits
                          for i in range(0, len(x), batch_size)])

    def predict(self, x, layout: str = "NCT") -> List[str]:
        return [self.class_names[i] for i in self.logits(self.prepare(x, layout)).argmax(-1).tolist()]


def main(argv: Optional[List[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="exported student directory")
    p.add_argument("--npz", help="file with X (and optionally y)")
    p.add_argument("--layout", default="NTC", choices=["NTC", "NCT"])
    p.add_argument("--eager", action="store_true", help="run the eager modules, not the fused inference form")
    args = p.parse_args(argv)
    if not args.model or not args.npz:
        p.error("--model and --npz are required")
    if not Path(args.npz).is_file():
        raise FileNotFoundError(f"--npz {args.npz!r} does not exist")
    data = np.load(args.npz, allow_pickle=False)
    predictor = Predictor(args.model, fused=False if args.eager else None)
    logits = predictor.logits(predictor.prepare(data["X"], args.layout))
    pred = logits.argmax(-1).numpy()
    out = {"predictions": [predictor.class_names[i] for i in pred]}
    if "y" in data:
        rep = classification_report(data["y"], pred, predictor.class_names)
        out.update(accuracy=rep["accuracy"], macro_f1=rep["macro_f1"])
    form = "fused" if predictor.fused is not None else "eager"
    print(json.dumps({k: v for k, v in out.items() if k != "predictions"} | {"n": len(pred), "form": form}))
    return out


if __name__ == "__main__":
    main()
