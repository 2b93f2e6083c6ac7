"""Sub-action recovery on synthetic data: does a token's predicted sub-action match the primitive
the generator actually put under its span?

For each token: prediction = argmax of the action decoder on its shape code, mapped from the
vocabulary to a primitive id; truth = the majority ground-truth primitive of the time steps in
[t, min(t + l, 1)] of its window. Reported against two chance levels: uniform over primitives,
and always predicting the most frequent true primitive.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import torch
from torch.utils.data import DataLoader


def primitive_of_vocab(vocab_texts: Sequence[str], primitives: Dict[str, str], order: Sequence[str]) -> torch.Tensor:
    """(M,) primitive id (index in `order`) of each vocabulary entry; -1 if it is no primitive's sentence."""
    by_text = {sentence: order.index(name) for name, sentence in primitives.items()}
    return torch.tensor([by_text.get(t, -1) for t in vocab_texts], dtype=torch.long)


def span_majority(gt: torch.Tensor, t: torch.Tensor, l: torch.Tensor, num_labels: int) -> torch.Tensor:
    """gt (B, L) labels per time step; t, l (B, G, 1) spans -> (B, G) majority label inside each span."""
    L = gt.shape[1]
    pos = torch.arange(L, device=gt.device, dtype=t.dtype)
    start, end = t * (L - 1), (t + l).clamp(max=1) * (L - 1)
    inside = ((pos >= start.floor()) & (pos <= end.ceil())).to(t.dtype)              # (B, G, L)
    onehot = torch.nn.functional.one_hot(gt, num_labels).to(t.dtype)                 # (B, L, P)
    return (inside @ onehot).argmax(dim=-1)                                           # (B, G)


TokenFn = Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@torch.no_grad()
def subaction_recovery(tokens: TokenFn, dataset, vocab_primitive: torch.Tensor, num_primitives: int,
                       batch_size: int = 64) -> Dict:
    """tokens(x) -> (t, l (B, G, 1), action_logits (B, G, M)) of a window's G tokens."""
    hits, total, truth_counts = 0, 0, torch.zeros(num_primitives, dtype=torch.long)
    for batch in DataLoader(dataset, batch_size=batch_size):
        t, l, logits = tokens(batch["x"])
        gt = batch["subaction"]                                                       # (B, L)
        truth = span_majority(gt, t.float(), l.float(), num_primitives)               # (B, G)
        pred = vocab_primitive[logits.argmax(-1).cpu()]                               # (B, G)
        hits += int((pred == truth.cpu()).sum())
        total += truth.numel()
        truth_counts += torch.bincount(truth.flatten().cpu(), minlength=num_primitives)
    return {"accuracy": hits / max(total, 1), "tokens": total,
            "chance_uniform": 1.0 / num_primitives,
            "chance_majority": float(truth_counts.max()) / max(total, 1)}


def teacher_tokens(teacher) -> TokenFn:
    """The teacher without label text (whole vocabulary as keys)."""
    def fn(x):
        out = teacher(x, keys="vocab", reconstruct=False)
        B = x.shape[0]
        fold = lambda v: v.reshape(B, -1, v.shape[-1])  # noqa: E731
        return fold(out["t"]), fold(out["l"]), fold(out["action_logits"])
    return fn


def student_tokens(distiller) -> TokenFn:
    """A student's own tokens (VQShape student) or its adapter tokens (CNN), signal only."""
    def fn(x):
        s_out, _ = distiller.student_forward(x, None)
        return s_out["attr"]["t"], s_out["attr"]["l"], s_out["action_logits"]
    return fn


def synthetic_vocab_map(vocab_texts: List[str], path) -> torch.Tensor:
    """Vocabulary -> primitive ids, from the `primitives:` section of the synthetic description file."""
    from kd.data.synthetic import PRIMITIVES
    from kd.text.descriptions import load_descriptions, read_class_names
    primitives = load_descriptions(path, read_class_names(path)).primitives
    if not primitives:
        raise ValueError(f"{path} has no `primitives:` section, needed to score sub-action recovery")
    return primitive_of_vocab(vocab_texts, primitives, list(PRIMITIVES))
