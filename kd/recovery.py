"""Sub-action recovery on synthetic data: does a token's predicted sub-action match the primitive
the generator actually put under its span?

Token level: prediction = argmax of the action decoder on the token's shape code (the action
codebook a student distils), mapped from the vocabulary to a primitive id; truth = the majority
ground-truth primitive of the time steps in [t, min(t + l, 1)] of its window.
Time-step level: a step's prediction is that of the token whose span covers it (the nearest span
centre where several do, the nearest centre overall where none does); truth = the generator's
primitive at that step. Both are reported beside their majority chance (always predicting the
most frequent true primitive) and the uniform chance.
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


def step_predictions(pred: torch.Tensor, t: torch.Tensor, l: torch.Tensor, L: int) -> torch.Tensor:
    """pred (B, G) per-token labels; t, l (B, G, 1) -> (B, L) each step's label from the covering token
    with the nearest span centre (or the nearest centre overall when no span covers the step)."""
    pos = torch.arange(L, device=t.device, dtype=t.dtype) / max(L - 1, 1)              # (L,)
    centre = t + l / 2                                                                # (B, G, 1)
    covers = (pos >= t) & (pos <= (t + l).clamp(max=1))                              # (B, G, L)
    dist = (pos - centre).abs() + (~covers) * 2.0                                     # covering tokens first
    return pred.gather(1, dist.argmin(dim=1))                                         # (B, L)


@torch.no_grad()
def subaction_recovery(tokens: TokenFn, dataset, vocab_primitive: torch.Tensor, num_primitives: int,
                       batch_size: int = 64) -> Dict:
    """tokens(x) -> (t, l (B, G, 1), action_logits (B, G, M)) of a window's G tokens."""
    hits, total, truth_counts = 0, 0, torch.zeros(num_primitives, dtype=torch.long)
    step_hits, steps, step_counts = 0, 0, torch.zeros(num_primitives, dtype=torch.long)
    for batch in DataLoader(dataset, batch_size=batch_size):
        t, l, logits = tokens(batch["x"])
        t, l = t.float().cpu(), l.float().cpu()
        gt = batch["subaction"]                                                       # (B, L)
        truth = span_majority(gt, t, l, num_primitives)                               # (B, G)
        pred = vocab_primitive[logits.argmax(-1).cpu()]                               # (B, G)
        hits += int((pred == truth).sum())
        total += truth.numel()
        truth_counts += torch.bincount(truth.flatten(), minlength=num_primitives)
        step_pred = step_predictions(pred, t, l, gt.shape[1])
        step_hits += int((step_pred == gt).sum())
        steps += gt.numel()
        step_counts += torch.bincount(gt.flatten(), minlength=num_primitives)
    return {"token_acc": hits / max(total, 1), "step_acc": step_hits / max(steps, 1),
            "majority": float(truth_counts.max()) / max(total, 1),
            "step_majority": float(step_counts.max()) / max(steps, 1),
            "chance_uniform": 1.0 / num_primitives, "tokens": total, "steps": steps}


def teacher_tokens(teacher, head: str = "action_logits") -> TokenFn:
    """The teacher without label text (whole vocabulary as keys); head: "action_logits" (the action
    decoder on the shape code) or "sub_scores" (the label-free token scores of ordered alignment)."""
    def fn(x):
        out = teacher(x, keys="vocab", reconstruct=False)
        B = x.shape[0]
        fold = lambda v: v.reshape(B, -1, v.shape[-1])  # noqa: E731
        return fold(out["t"]), fold(out["l"]), fold(out[head])
    return fn


def class_loglik(teacher, out: Dict, y: torch.Tensor, p_stay: float) -> torch.Tensor:
    """Alignment log-likelihood (B*C,) of every series under class y."""
    from teachers.alignment import chain_posteriors, class_emissions
    centre, ids, n_states = teacher.class_rows(out, y)
    return chain_posteriors(class_emissions(teacher.emission_scores(out), centre, ids)[0], n_states, p_stay=p_stay)[1]


@torch.no_grad()
def alignment_report(teacher, dataset, batch_size: int = 64) -> Dict:
    """What ordered alignment learned, on held-out windows (no ground truth needed):
    `free_vs_viterbi` = share of tokens whose label-free sub-action (argmax of the scores over the
    whole vocabulary, no class given) is the state of the Viterbi path given the true class;
    `likelihood_class_acc` = accuracy of naming a window's class by its best alignment likelihood
    (summed over channels); `decoder_vocab_share` = share of the vocabulary that is the top
    sub-action of some used shape code under the action decoder."""
    from teachers.alignment import chain_viterbi, class_emissions
    agree, tokens, right, windows, used = 0, 0, 0, 0, set()
    n_cls, C, p = len(teacher.class_index), teacher.num_channels, teacher.fusion.align_p_stay
    for batch in DataLoader(dataset, batch_size=batch_size):
        x, y = batch["x"], batch["y"]
        out = teacher(x, keys="vocab", reconstruct=False)
        centre, ids, n_states = teacher.class_rows(out, y)
        emit, order = class_emissions(teacher.emission_scores(out), centre, ids)
        path, _ = chain_viterbi(emit, n_states, p_stay=p)
        viterbi = torch.empty_like(path).scatter_(1, order, ids.gather(1, path))   # vocabulary ids, token order
        agree += int((viterbi == out["sub_scores"].argmax(-1)).sum())
        tokens += viterbi.numel()
        lik = torch.stack([class_loglik(teacher, out, torch.full_like(y, c), p).view(len(y), C).sum(1)
                           for c in range(n_cls)], dim=1)                            # (B, n_cls)
        right += int((lik.argmax(1) == y).sum())
        windows += len(y)
        used.update(out["code_idx"].flatten().tolist())
    top = teacher.action_decoder(teacher.codebook.weight[sorted(used)]).argmax(-1)
    return {"free_vs_viterbi": agree / max(tokens, 1), "likelihood_class_acc": right / max(windows, 1),
            "decoder_vocab_share": len(set(top.tolist())) / teacher.M, "tokens": tokens, "windows": windows}


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
