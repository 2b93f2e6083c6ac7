"""Sub-action vocabulary: every class's sub-actions pooled and de-duplicated by cosine similarity."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import torch
import torch.nn.functional as F


@dataclass
class Vocabulary:
    texts: List[str]              # each entry's first sentence
    emb: torch.Tensor             # (M, D) each entry's first embedding
    class_index: torch.Tensor     # (n_cls, K_max) vocabulary ids of each class's sub-actions, -1 = padding
    class_mask: torch.Tensor      # (n_cls, K_max) True where class_index is real

    @property
    def M(self) -> int:
        return self.emb.shape[0]


def build_vocabulary(sub_emb: Sequence[torch.Tensor], sub_texts: Sequence[Sequence[str]],
                     threshold: float) -> Vocabulary:
    """Greedy in class order: a sub-action joins the first entry with cos >= threshold, else is new.

    sub_emb: per class (K_c, D); sub_texts: per class K_c sentences.
    """
    pooled = F.normalize(torch.cat(list(sub_emb)).float(), dim=-1)            # (sum K_c, D)
    gram = pooled @ pooled.t()                                                # cosine similarities
    flat_texts = [t for texts in sub_texts for t in texts]
    entry_of: List[int] = []
    heads: List[int] = []                                                     # row of each entry's first member
    for i in range(len(pooled)):
        match = [e for e, h in enumerate(heads) if gram[i, h] >= threshold]
        if match:
            entry_of.append(match[0])
        else:
            entry_of.append(len(heads))
            heads.append(i)
    K = max(len(t) for t in sub_texts)
    index = torch.full((len(sub_texts), K), -1, dtype=torch.long)
    start = 0
    for c, texts in enumerate(sub_texts):
        index[c, :len(texts)] = torch.tensor(entry_of[start:start + len(texts)])
        start += len(texts)
    return Vocabulary([flat_texts[h] for h in heads], pooled[heads].clone(), index, index >= 0)
