"""Sub-action vocabulary: every class's sub-actions pooled and de-duplicated by cosine similarity."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

from kd.text.errors import TextError

ROUNDING = 1e-6   # identical texts give cos 1 - 1e-7, not 1: threshold 1.0 must still merge them


@dataclass
class Vocabulary:
    texts: List[str]              # (M,) each entry's first sentence
    emb: torch.Tensor             # (M, D) each entry's first embedding
    class_index: torch.Tensor     # (n_cls, K_max) long: vocabulary ids of each class's sub-actions, -1 = padding
    class_mask: torch.Tensor      # (n_cls, K_max) bool: True where class_index is real

    @property
    def M(self) -> int:
        return self.emb.shape[0]


def check_inputs(sub_emb, threshold: float, texts) -> None:
    if not sub_emb or any(e.ndim != 2 or len(e) == 0 for e in sub_emb):
        raise TextError("build_vocabulary needs one non-empty (K_c, D) tensor per class")
    if len({e.shape[1] for e in sub_emb}) != 1:
        raise TextError(f"sub-action embeddings differ in width: {[tuple(e.shape) for e in sub_emb]}")
    if not 0.0 < threshold <= 1.0:
        raise TextError(f"dedup threshold {threshold} must lie in (0, 1] (text.dedup_threshold)")
    if texts is not None and [len(t) for t in texts] != [len(e) for e in sub_emb]:
        raise TextError("sub-action texts and embeddings differ in count per class")


def greedy_groups(gram: torch.Tensor, threshold: float) -> tuple[List[int], List[int]]:
    """Row i joins the first existing entry whose head has cos >= threshold (up to float rounding),
    else heads a new one."""
    entry_of, heads = [], []
    for i in range(len(gram)):
        hits = (gram[i, heads] >= threshold - ROUNDING).nonzero() if heads else torch.empty(0)
        entry_of.append(int(hits[0]) if len(hits) else len(heads))
        if not len(hits):
            heads.append(i)
    return entry_of, heads


def build_vocabulary(sub_emb: Sequence[torch.Tensor], threshold: float,
                     texts: Optional[Sequence[Sequence[str]]] = None) -> Vocabulary:
    """Pool every class's (K_c, D) sub-action embeddings in class order and de-duplicate greedily.

    `texts` (per class K_c sentences) name the entries; without them an entry is named by its first
    occurrence, "class c, sub-action k".
    """
    check_inputs(sub_emb, threshold, texts)
    pooled = torch.cat(list(sub_emb)).float()                                  # (sum K_c, D)
    unit = F.normalize(pooled, dim=-1)
    entry_of, heads = greedy_groups(unit @ unit.t(), threshold)                # Gram of cosines
    names = [t for ts in texts for t in ts] if texts is not None else \
        [f"class {c}, sub-action {k}" for c, e in enumerate(sub_emb) for k in range(len(e))]
    sizes = [len(e) for e in sub_emb]
    index = torch.full((len(sizes), max(sizes)), -1, dtype=torch.long)       # (n_cls, K_max)
    for c, ids in enumerate(torch.tensor(entry_of).split(sizes)):
        index[c, :len(ids)] = ids
    return Vocabulary([names[h] for h in heads], pooled[heads].clone(), index, index >= 0)
