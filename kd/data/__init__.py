"""Data layer: every data set becomes `Splits` (train / val / test datasets of dict items).

    from kd.data import build_splits
    splits = build_splits(cfg.data)     # item: {"x": [C, L] float32, "y", "subject", "index"} (+ "subaction")

`DATASETS` maps `data.name` to a builder taking the data config; see METHOD.md §1.
"""
from __future__ import annotations

from typing import Any, Callable, Dict

from .core import DataError, Splits, nearest_indices, resample
from .hapt import build_hapt
from .npz import build_npz
from .synthetic import build_synthetic
from .watch import build_watch

DATASETS: Dict[str, Callable[[Any], Splits]] = {
    "watch": build_watch,
    "npz": build_npz,
    "synthetic": build_synthetic,
    "hapt": build_hapt,
}


def build_splits(cfg: Any) -> Splits:
    """`cfg`: the `data` node of the run config (OmegaConf) or a plain `DataConfig` dataclass."""
    if cfg.name not in DATASETS:
        raise DataError(f"unknown data set {cfg.name!r} (data.name); known: {sorted(DATASETS)}")
    return DATASETS[cfg.name](cfg)


__all__ = ["DATASETS", "DataError", "Splits", "build_splits", "nearest_indices", "resample"]
