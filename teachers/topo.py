"""A topological teacher (`teacher.arch: topo`): a classifier on persistence images of each window.

The second modality of mGLW-style distillation for wearable sensors (Jeon et al.): what a window's
topology says about the activity, a view a time-series student cannot compute cheaply at inference
but can learn from. Per channel, the z-normalised series is filtered by its sublevel sets (the
lower-star filtration of the path graph) and by its superlevel sets (the same on -x); the 0-dimensional
persistence diagram of each -- one (birth, death) pair per local minimum (maximum), born at its
value and dying where it merges with a deeper one -- is computed by ripser, and turned into a
persistence image by persim (Gaussian of covariance sigma I around each (birth, persistence) point,
integrated over a fixed pixel grid). A diagram is invariant to reparametrising time, so the images
say how deep and how many the dips and peaks are, not where or when; each channel's mean and log
std (which the z-normalisation removes) are read beside them.

The images are not differentiable in x and do not need to be: the teacher's input transform is fixed.
They are computed once per distinct window (on the CPU, about 1 ms per diagram) and kept in memory,
keyed by the window's bytes, so every later epoch and the student stage look them up; the oldest are
dropped beyond `cache_windows` (windows that change at every step, e.g. mixup, are never seen twice).
The classifier is an MLP on all channels' standardised pixels and statistics; its hidden layer is the
teacher's feature (one token), which a student reads through a similarity-preserving loss (sp) or a
workspace source.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import scipy.sparse as sparse
import torch
import torch.nn as nn

from kd.layers import check_finite_input, check_rank
from kd.outputs import Classifier, Outputs


def lower_star_diagram(v: np.ndarray) -> np.ndarray:
    """(T,) -> (k, 2) finite (birth, death) pairs of the 0-dimensional sublevel-set persistence of v on
    the path graph: vertex i enters at v[i], edge (i, i+1) at max(v[i], v[i+1]). The essential class
    (the global minimum, never dying) is dropped: every window has exactly one."""
    from ripser import ripser   # imported here: only this teacher needs it
    n = len(v)
    i = np.arange(n - 1)
    rows = np.concatenate([np.arange(n), i])
    cols = np.concatenate([np.arange(n), i + 1])
    values = np.concatenate([v, np.maximum(v[:-1], v[1:])])
    dgm = ripser(sparse.coo_matrix((values, (rows, cols)), shape=(n, n)).tocsr(),
                 maxdim=0, distance_matrix=True)["dgms"][0]
    return dgm[np.isfinite(dgm[:, 1])]


class PersistenceImages:
    """Window (C, T) -> (C, 2, H, W) persistence images of each z-normalised channel: sublevel and
    superlevel 0-dimensional diagrams on a (birth, persistence) grid of [-birth_range, birth_range] x
    [0, pers_max] in units of the channel's std."""

    def __init__(self, pixel_size: float, sigma: float, birth_range: float, pers_max: float):
        from persim import PersistenceImager   # imported here (with matplotlib and scikit-learn): only this teacher needs it
        self.imager = PersistenceImager(birth_range=(-birth_range, birth_range), pers_range=(0.0, pers_max),
                                        pixel_size=pixel_size, kernel_params={"sigma": [[sigma, 0.0], [0.0, sigma]]})
        self.shape = tuple(int(r) for r in self.imager.resolution)            # (H, W)

    @property
    def num_pixels(self) -> int:
        return self.shape[0] * self.shape[1]

    def __call__(self, window: np.ndarray) -> np.ndarray:
        out = np.zeros((len(window), 2, *self.shape), dtype=np.float32)
        for c, v in enumerate(window.astype(np.float64)):
            std = v.std()
            if std == 0:                                                    # a flat channel: no dips, no peaks
                continue
            z = (v - v.mean()) / std
            for k, signal in enumerate((z, -z)):
                dgm = lower_star_diagram(signal)
                if len(dgm):
                    out[c, k] = self.imager.transform(dgm, skew=True)
        return out


class TopoTeacher(Classifier, nn.Module):
    """Persistence images + channel statistics -> MLP -> class logits; the hidden layer is its feature
    (B, D, 1), taught as one token (the engine's protocol from `Classifier`)."""

    OUTPUTS = frozenset({"logits", "features"})
    TEACH_OUTPUTS = OUTPUTS | {"feature_tokens"}
    num_actions = 0

    cache_windows = 20_000          # about 18 KB each for 6 channels on the default grid

    def __init__(self, cfg, num_channels: int, num_classes: int):
        super().__init__()
        self.images = PersistenceImages(cfg.pixel_size, cfg.sigma, cfg.birth_range, cfg.pers_max)
        self.num_channels, self.num_classes, self.feature_dim = num_channels, num_classes, cfg.hidden
        dim_in = num_channels * (2 * self.images.num_pixels + 2)
        self.input_norm = nn.BatchNorm1d(dim_in)       # standardises every pixel and statistic over the data
        self.body = nn.Sequential(nn.Linear(dim_in, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout))
        self.head = nn.Linear(cfg.hidden, num_classes)
        self._cache: "OrderedDict[bytes, torch.Tensor]" = OrderedDict()

    def topology(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, T) -> (B, C*2*H*W) flattened persistence images, each window's computed once."""
        rows = []
        for w in x.detach().float().cpu().numpy():
            key = hashlib.blake2b(w.tobytes(), digest_size=16).digest()
            if key not in self._cache:
                self._cache[key] = torch.from_numpy(self.images(w)).flatten()
                while len(self._cache) > self.cache_windows:
                    self._cache.popitem(last=False)
            rows.append(self._cache[key])
        return torch.stack(rows).to(x.device)

    def forward(self, x: torch.Tensor, mix=None) -> Outputs:
        if mix is not None:
            raise ValueError("a topological teacher is not a student: it has no workspace read-out")
        check_rank(x, [None, self.num_channels, None])
        check_finite_input(x)
        stats = torch.cat([x.mean(-1), x.std(-1).clamp_min(1e-6).log()], dim=-1)         # (B, 2C)
        h = self.body(self.input_norm(torch.cat([self.topology(x), stats], dim=-1)))     # (B, hidden)
        return Outputs(logits=self.head(h), features=h[..., None])                       # features (B, D, 1)
