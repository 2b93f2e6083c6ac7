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
import torch.nn.functional as F
from torch.utils.data import DataLoader


def primitive_of_vocab(vocab_texts: Sequence[str], primitives: Dict[str, str], order: Sequence[str]) -> torch.Tensor:
    """(M,) primitive id (index in `order`) of each vocabulary entry; -1 if it is no primitive's sentence."""
    by_text = {sentence: order.index(name) for name, sentence in primitives.items()}
    return torch.tensor([by_text.get(t, -1) for t in vocab_texts], dtype=torch.long)


def span_majority(gt: torch.Tensor, t: torch.Tensor, l: torch.Tensor, num_labels: int) -> torch.Tensor:
    """gt (B, L) labels per time step (-1: no truth); t, l (B, G, 1) spans -> (B, G) majority label inside
    each span, -1 where no step under it has a label."""
    L = gt.shape[1]
    pos = torch.arange(L, device=gt.device, dtype=t.dtype)
    start, end = t * (L - 1), (t + l).clamp(max=1) * (L - 1)
    inside = ((pos >= start.floor()) & (pos <= end.ceil())).to(t.dtype)              # (B, G, L)
    onehot = F.one_hot(gt.clamp(min=0), num_labels).to(t.dtype) * (gt >= 0)[..., None]  # (B, L, P)
    counts = inside @ onehot                                                           # (B, G, P)
    return counts.argmax(dim=-1).masked_fill(counts.sum(-1) == 0, -1)                 # (B, G)


TokenFn = Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


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
    """tokens(x, y) -> (t, l (B, G, 1), action_logits (B, G, M)) of a window's G tokens (y: the true class,
    which only a decoding given the class may read)."""
    hits, total, truth_counts = 0, 0, torch.zeros(num_primitives, dtype=torch.long)
    step_hits, steps, step_counts = 0, 0, torch.zeros(num_primitives, dtype=torch.long)
    for batch in DataLoader(dataset, batch_size=batch_size):
        t, l, logits = tokens(batch["x"], batch["y"])
        t, l = t.float().cpu(), l.float().cpu()
        gt = batch["subaction"]                                                       # (B, L), -1: no truth
        truth = span_majority(gt, t, l, num_primitives)                               # (B, G)
        pred = vocab_primitive[logits.argmax(-1).cpu()]                               # (B, G)
        known, known_steps = truth >= 0, gt >= 0
        hits += int((pred == truth)[known].sum())
        total += int(known.sum())
        truth_counts += torch.bincount(truth[known], minlength=num_primitives)
        step_pred = step_predictions(pred, t, l, gt.shape[1])
        step_hits += int((step_pred == gt)[known_steps].sum())
        steps += int(known_steps.sum())
        step_counts += torch.bincount(gt[known_steps], minlength=num_primitives)
    return {"token_acc": hits / max(total, 1), "step_acc": step_hits / max(steps, 1),
            "majority": float(truth_counts.max()) / max(total, 1),
            "step_majority": float(step_counts.max()) / max(steps, 1),
            "chance_uniform": 1.0 / num_primitives, "tokens": total, "steps": steps}


def teacher_tokens(teacher, head: str = "action_logits") -> TokenFn:
    """The teacher without label text (whole vocabulary as keys); head: "action_logits" (the action
    decoder on the shape code) or "sub_scores" (the label-free token scores of ordered alignment)."""
    def fn(x, y):
        out = teacher(x, keys="vocab", reconstruct=False)
        B = x.shape[0]
        fold = lambda v: v.reshape(B, -1, v.shape[-1])  # noqa: E731
        return fold(out["t"]), fold(out["l"]), fold(out[head])
    return fn


def teacher_viterbi_tokens(teacher) -> TokenFn:
    """The teacher's decoding *given the true class*: each token's state on the Viterbi path of its
    class's ordered sub-actions (MMVQShape.decode_subactions), as one-hot logits. An interpretation of
    labelled windows, not a label-free prediction."""
    def fn(x, y):
        dec = teacher.decode_subactions(x, y)
        B = x.shape[0]
        onehot = torch.nn.functional.one_hot(dec["viterbi"], teacher.M).float()
        return dec["t"].reshape(B, -1, 1), dec["l"].reshape(B, -1, 1), onehot.reshape(B, -1, teacher.M)
    return fn


# The run warns that the alignment has collapsed above either limit: the share of held-out windows aligned
# to one sub-action throughout (measured: 0.00 for every working synthetic alignment; 0.81-1.00 for the
# collapsed ones, synthetic with an early switch and watch; experiments/subactions.md §8), or the mean share
# of a window's tokens on its commonest sub-action (working synthetic alignments 0.36-0.38; collapsed 0.90-1.00,
# among them a watch alignment whose paths only change state in the first and last bins, which the first
# figure misses; experiments/subactions.md §9).
ONE_STATE_LIMIT = 0.5
DOMINANT_LIMIT = 0.75


@torch.no_grad()
def alignment_report(teacher, dataset, batch_size: int = 64) -> Dict:
    """What ordered alignment learned, on held-out windows (no ground truth needed):
    `free_vs_viterbi` = share of tokens whose label-free sub-action (argmax of the scores over the
    whole vocabulary, no class given) is the state of the Viterbi path given the true class;
    `likelihood_class_acc` = accuracy of naming a window's class by its best alignment likelihood;
    `decoder_vocab_share` = share of the vocabulary that is the top sub-action of some used shape code
    under the action decoder; `one_state_windows` = share of windows whose Viterbi path stays on one
    sub-action from start to end; `dominant_state_share` = mean over windows of the share of the window's
    tokens on its path's commonest sub-action (`collapsed`: an alignment that has not learned the order, above
    ONE_STATE_LIMIT or DOMINANT_LIMIT); `free_top_share` = share of tokens whose label-free sub-action is the
    commonest one."""
    agree, tokens, right, windows, one_state, dominant, used = 0, 0, 0, 0, 0, 0.0, set()
    free_counts = torch.zeros(teacher.M, dtype=torch.long)
    n_cls = len(teacher.class_index)
    for batch in DataLoader(dataset, batch_size=batch_size):
        x, y = batch["x"], batch["y"]
        out = teacher(x, keys="vocab", reconstruct=False)
        dec = teacher.decode(out, y)
        agree += int((dec["viterbi"] == dec["free"]).sum())
        tokens += dec["viterbi"].numel()
        lik = torch.stack([teacher.window_loglik(teacher.chain(out, torch.full_like(y, c)), len(y))
                           for c in range(n_cls)], dim=1)                            # (B, n_cls)
        right += int((lik.argmax(1) == y).sum())
        windows += len(y)
        path = dec["viterbi"].reshape(len(y), -1)                                     # (B, C*N) states
        one_state += int((path == path[:, :1]).all(dim=1).sum())
        dominant += float(F.one_hot(path, teacher.M).sum(1).amax(1).sum()) / path.shape[1]
        free_counts += torch.bincount(dec["free"].flatten().cpu(), minlength=teacher.M)
        used.update(out["code_idx"].flatten().tolist())
    top = teacher.action_decoder(teacher.codebook.weight[sorted(used)]).argmax(-1)
    share, dominant = one_state / max(windows, 1), dominant / max(windows, 1)
    return {"free_vs_viterbi": agree / max(tokens, 1), "likelihood_class_acc": right / max(windows, 1),
            "decoder_vocab_share": len(set(top.tolist())) / teacher.M, "one_state_windows": share,
            "dominant_state_share": dominant, "free_top_share": float(free_counts.max()) / max(tokens, 1),
            "collapsed": share > ONE_STATE_LIMIT or dominant > DOMINANT_LIMIT,
            "tokens": tokens, "windows": windows}


def student_tokens(distiller, head: str = "action_logits") -> TokenFn:
    """A student's own tokens (VQShape student) or its adapter tokens (CNN), signal only; head:
    "action_logits" (the frozen action decoder on each token's code) or "sub_logits" (the student's
    sub-action head, distilled from the teacher's label-free scores by sub_kl)."""
    def fn(x, y):
        s_out, _ = distiller.student_forward(x, None)
        return s_out.attr["t"], s_out.attr["l"], s_out.get(head)
    return fn


class Transcripts(torch.nn.Module):
    """Each class's ordered sub-actions as vocabulary ids (buffers `class_index`, `class_mask`: the teacher's) and
    the chain a decoding given the class runs on (MMVQShape.decode's: `n_bins` equal time bins, `p_stay`,
    `chain`): what decoding a scorer's tokens given a class needs of the teacher, small enough for an exported
    student to carry."""

    def __init__(self, class_index: torch.Tensor, class_mask: torch.Tensor, n_bins: int, p_stay: float, chain: str):
        super().__init__()
        self.register_buffer("class_index", class_index.long().clone())              # (n_cls, K)
        self.register_buffer("class_mask", class_mask.bool().clone())                # (n_cls, K)
        self.n_bins, self.p_stay, self.chain = int(n_bins), float(p_stay), str(chain)

    @classmethod
    def of(cls, teacher) -> "Transcripts":
        return cls(teacher.class_index, teacher.class_mask, teacher.cfg.num_token, teacher.align.p_stay,
                   teacher.align.chain)

    @property
    def args(self) -> Dict:
        """The constructor's arguments but the buffers' values (their shape instead): what meta.json keeps."""
        return {"shape": list(self.class_index.shape), "n_bins": self.n_bins, "p_stay": self.p_stay,
                "chain": self.chain}

    @torch.no_grad()
    def decode(self, t: torch.Tensor, l: torch.Tensor, scores: torch.Tensor, y: torch.Tensor,
               per_bin: bool = False) -> torch.Tensor:
        """Tokens' spans t, l (B, G, 1) and scores (B, G, M) over the vocabulary, classes y (B,) -> each token's
        vocabulary id (B, G) on the best ordered path through its window's class: the log-softmax scores of the
        class's sub-actions averaged over the tokens whose span centre falls in each time bin, chain_viterbi,
        each token the state of its bin (per_bin: the path itself, (B, n_bins)). (A student's head has no score
        prior to divide by, unlike the teacher.)"""
        from teachers.alignment import chain_kwargs, chain_viterbi, mean_bins, time_bins
        G, N = scores.shape[1], self.n_bins
        ids = self.class_index[y]                                                     # (B, K)
        lp = scores.float().log_softmax(-1).gather(-1, ids[:, None, :].expand(-1, G, -1))  # (B, G, K)
        bins = time_bins((t + l / 2).squeeze(-1), N)                                  # (B, G)
        emit = mean_bins(lp, bins, N)
        path, _ = chain_viterbi(emit, self.class_mask[y].sum(1), **chain_kwargs(self.chain), p_stay=self.p_stay)
        return ids.gather(1, path if per_bin else path.gather(1, bins))


def given_class_tokens(tokens: TokenFn, transcripts: Transcripts) -> TokenFn:
    """Any scorer's tokens decoded *given the true class* (Transcripts.decode), as one-hot logits."""
    def fn(x, y):
        t, l, scores = tokens(x, y)
        return t, l, F.one_hot(transcripts.decode(t, l, scores, y), scores.shape[-1]).float()
    return fn


@torch.no_grad()
def argmax_agreement(student: Callable, teacher: Callable, dataset, batch_size: int = 64) -> float:
    """Share of tokens whose argmax sub-action under `student(x)` equals that under `teacher(x, y)` (both
    (B, G, M) scores). Needs no ground truth, so it can choose a student's settings on validation windows."""
    same, total = 0, 0
    for batch in DataLoader(dataset, batch_size=batch_size):
        s, t = student(batch["x"]), teacher(batch["x"], batch["y"])
        same += int((s.argmax(-1) == t.argmax(-1)).sum())
        total += s.shape[0] * s.shape[1]
    return same / max(total, 1)


def majority_guess(train, test, num_labels: int) -> float:
    """Step recovery of always naming the commonest labelled step of the training windows (`subaction`)."""
    def counts(d):
        gt = d.subaction[d.subaction >= 0]
        return torch.bincount(gt, minlength=num_labels)
    return float(counts(test)[counts(train).argmax()]) / max(int(counts(test).sum()), 1)


def supervised_ceiling(teacher, splits, num_labels: int, seed: int = 0, epochs: int = 300, check_every: int = 25,
                       lr: float = 1e-3) -> Dict:
    """What the teacher's label-free scores could reach at most from their own inputs: a reader of the same
    architecture (BinConvReader over the same time-bin features, MMVQShape.bin_features, each token taking its
    bin's output) trained on the *true* label of every training token (the majority step under its span),
    full-batch Adam on inputs standardised by the training tokens' statistics, the epoch chosen on the
    validation windows' step recovery; its recovery of the test windows (subaction_recovery)."""
    from teachers.mmvqshape import BinConvReader
    teacher.eval()

    @torch.no_grad()
    def inputs(dataset):
        rows = {"ctx": [], "bins": [], "truth": []}
        for b in DataLoader(dataset, batch_size=64):
            B = len(b["y"])
            out = teacher(b["x"], keys="vocab", reconstruct=False)
            ctx, bins = teacher.bin_features(out, B)                                  # (B, N, W), (B, C*N, 1)
            t, l = out["t"].float().view(B, -1, 1), out["l"].float().view(B, -1, 1)
            rows["ctx"].append(ctx.float())
            rows["bins"].append(bins.squeeze(-1))
            rows["truth"].append(span_majority(b["subaction"], t, l, num_labels))
        return {k: torch.cat(v) for k, v in rows.items()}

    tr = inputs(splits.train)
    mean, std = tr["ctx"].flatten(0, 1).mean(0), tr["ctx"].flatten(0, 1).std(0) + 1e-6
    torch.manual_seed(seed)
    reader = BinConvReader(tr["ctx"].shape[-1], num_labels, teacher.cfg.dim, max(teacher.align.layers, 1))
    opt = torch.optim.Adam(reader.parameters(), lr=lr, weight_decay=1e-4)
    per_token = lambda ctx, bins: reader((ctx - mean) / std).gather(  # noqa: E731
        1, bins[..., None].expand(-1, -1, num_labels))                                 # (B, C*N, P)

    def tokens(x, y):
        out = teacher(x, keys="vocab", reconstruct=False)
        ctx, bins = teacher.bin_features(out, len(y))
        return out["t"].view(len(y), -1, 1), out["l"].view(len(y), -1, 1), per_token(ctx.float(), bins.squeeze(-1))

    identity = torch.arange(num_labels)
    known = tr["truth"] >= 0
    best, best_state, best_epoch = -1.0, None, 0
    for epoch in range(1, epochs + 1):
        reader.train()
        loss = F.cross_entropy(per_token(tr["ctx"], tr["bins"])[known], tr["truth"][known])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if epoch % check_every == 0:
            reader.eval()
            val = subaction_recovery(tokens, splits.val, identity, num_labels)["step_acc"]
            if val > best:
                best, best_epoch = val, epoch
                best_state = {k: v.clone() for k, v in reader.state_dict().items()}
    reader.load_state_dict(best_state)
    reader.eval()
    return {**subaction_recovery(tokens, splits.test, identity, num_labels), "val_step_acc": best, "epoch": best_epoch}


def hapt_vocab_map(vocab_texts: List[str], path) -> torch.Tensor:
    """Vocabulary -> EPISODE_TRUTH ids (kd/data/hapt.py), the terms HAPT's per-sample labels give: a sentence
    of a posture class's sub-actions (SITTING, STANDING, LAYING) names that posture, every other sentence (the
    transitions' movements) TRANSITION: the data set labels a transition as one segment, not its phases."""
    from kd.data.hapt import ACTIVITIES, EPISODE_TRUTH
    from kd.text.descriptions import load_descriptions
    desc = load_descriptions(path, ACTIVITIES)
    posture = {s: EPISODE_TRUTH.index(name) for name, subs in zip(desc.class_names, desc.subactions)
               if name in EPISODE_TRUTH for s in subs}
    return torch.tensor([posture.get(t, EPISODE_TRUTH.index("TRANSITION")) for t in vocab_texts], dtype=torch.long)


def synthetic_vocab_map(vocab_texts: List[str], path) -> torch.Tensor:
    """Vocabulary -> primitive ids, from the `primitives:` section of the synthetic description file."""
    from kd.data.synthetic import PRIMITIVES
    from kd.text.descriptions import load_descriptions, read_class_names
    primitives = load_descriptions(path, read_class_names(path)).primitives
    if not primitives:
        raise ValueError(f"{path} has no `primitives:` section, needed to score sub-action recovery")
    return primitive_of_vocab(vocab_texts, primitives, list(PRIMITIVES))
