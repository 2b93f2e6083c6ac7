"""Model checkpoints: safetensors weights + JSON metadata, written atomically.

A checkpoint directory holds `model.safetensors` (every parameter and buffer), `meta.json`
(architecture, resolved config, class names, channels, vocabulary texts, ...) and optionally
more safetensors files (e.g. a teacher's `frozen.safetensors`). It is written to a temporary
sibling directory and renamed into place, so a crash never leaves a half-written checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, or does not fit what loads it."""


def assert_finite_state(state: Dict[str, torch.Tensor], what: str) -> None:
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"refusing to save {what}: non-finite values in {bad[:5]}")


def atomic_dir_write(path: Path, write) -> None:
    """Run write(tmp_dir), then swap tmp_dir into `path` (the old one removed only afterwards)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write(tmp)
    for f in tmp.iterdir():                     # flush file contents before the rename
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def save_model(path, model: nn.Module, meta: Dict, extra: Optional[Dict[str, Dict[str, torch.Tensor]]] = None) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    assert_finite_state(state, f"checkpoint {path}")

    def write(tmp: Path):
        save_file(state, str(tmp / "model.safetensors"))
        for name, tensors in (extra or {}).items():
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / f"{name}.safetensors"))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))

    atomic_dir_write(Path(path), write)


def read_checkpoint(path) -> Tuple[Dict[str, torch.Tensor], Dict]:
    """-> (state dict, meta); clear errors for a missing, truncated or corrupt checkpoint."""
    path = Path(path)
    weights, meta_file = path / "model.safetensors", path / "meta.json"
    for f in (weights, meta_file):
        if not f.is_file():
            raise CheckpointError(f"checkpoint {str(path)!r} has no {f.name}; is this a checkpoint directory "
                                  f"written by distill.py?")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{meta_file} is not valid JSON ({err}); the checkpoint is corrupt") from None
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{weights} cannot be read ({err}); the file is truncated or corrupt — "
                              f"re-export it or retrain") from None
    return state, meta


def load_weights(model: nn.Module, state: Dict[str, torch.Tensor], where: str) -> None:
    """load_state_dict(strict) with a message that lists what differs."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {list(state[k].shape)} vs model {list(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(f"checkpoint {where} does not fit the model built from the config: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatch {shapes[:5]}. "
                              f"A checkpoint written before the model gained these parts (e.g. a VQShape teacher "
                              f"from before the decoder class token and codebook buffers) cannot be loaded: "
                              f"retrain it (distill.py stage=teacher) or re-export it with the version that wrote it")
    model.load_state_dict(state)
