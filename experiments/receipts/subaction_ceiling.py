"""How much a trained teacher's tokens can say about the synthetic sub-actions, and how close
weak supervision gets to that.

For every token of the training and test windows (ground truth: the majority primitive under its
span, kd.recovery.span_majority) it reports, on the test windows:

* supervised ceilings (they see the true sub-actions of the training tokens; no method that does
  not may beat them with the same inputs): the best code -> primitive map, per channel; naive Bayes
  over the codes of all channels at one time position; an MLP on the continuous attributes
  (z_e, mu, sigma) of one channel, of all channels at one time position, and of all channels at
  1, 2, 4 positions either side; three residual convolutions over the positions (6 either side);
* weak supervision on the codes (batch EM from the class only, as the teacher's E-step does
  online): the code table learned by the set-only or the ordered E-step, read label-free (argmax of
  p(codes | sub-action) p(sub-action), no class given) and as the Viterbi path given the class;
* realignment from the class only (what `alignment.scores_from_step` does online): from the ordered
  code table's targets, rounds of (an MLP on every channel's attributes at 1 or 2 positions either side
  trained on the targets; the ordered E-step re-run on its likelihoods).

Tokens of different channels are paired by their rank in span-centre order (tiling spans, as the
health recipe's are, put the k-th token of every channel at the same place).

    python -m experiments.receipts.subaction_ceiling runs/syn_health_ordered_code_s0 [--out results.json]
"""
from __future__ import annotations

import json
from typing import Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from experiments.run_reports import main_over_runs
from kd.config import load_config
from kd.data import build_splits
from kd.data.synthetic import PRIMITIVES
from kd.layers import neighbour_context
from kd.stages import load_teacher
from kd.recovery import span_majority, synthetic_vocab_map
from kd.text import description_file
from teachers.alignment import CodeEmissions, chain_viterbi, pool_bins, state_posteriors, tokens_to_vocabulary
from teachers.mmvqshape import BinConvReader


@torch.no_grad()
def collect(teacher, dataset) -> Dict[str, torch.Tensor]:
    """Per window (B), channel (C) and token rank by span centre (N): code, attributes, truth."""
    C, P = teacher.num_channels, len(PRIMITIVES)
    rows = {"codes": [], "attrs": [], "truth": [], "y": []}
    for b in DataLoader(dataset, batch_size=64):
        B = len(b["y"])
        out = teacher(b["x"], keys="vocab", reconstruct=False)
        t, l = out["t"].float(), out["l"].float()
        order = (t + l / 2).squeeze(-1).argsort(dim=1)                              # (B*C, N)
        truth = span_majority(b["subaction"], t.view(B, -1, 1), l.view(B, -1, 1), P).view(B * C, -1)
        attrs = torch.cat([out["z_e"], out["mu"], out["sigma"]], dim=-1)
        pick = lambda v: v.gather(1, order if v.dim() == 2 else order[..., None].expand_as(v))  # noqa: E731
        rows["codes"].append(pick(out["code_idx"]).view(B, C, -1))
        rows["attrs"].append(pick(attrs).view(B, C, *attrs.shape[1:]))
        rows["truth"].append(pick(truth).view(B, C, -1)[:, 0])                  # (B, N): channel 0's spans
        rows["y"].append(b["y"])
    return {k: torch.cat(v) for k, v in rows.items()}


def code_oracles(tr, te, V: int) -> Dict[str, float]:
    P, C = len(PRIMITIVES), tr["codes"].shape[1]
    tables = torch.full((C, P, V), 0.1)                                               # add-0.1 counts
    for c in range(C):
        tables[c].index_put_((tr["truth"].flatten(), tr["codes"][:, c].flatten()),
                             torch.ones(tr["truth"].numel()), accumulate=True)
    per_channel = [float((tables[c].argmax(0)[te["codes"][:, c]] == te["truth"]).float().mean()) for c in range(C)]
    log_t = (tables / tables.sum(-1, keepdim=True)).log()
    prior = torch.bincount(tr["truth"].flatten(), minlength=P).float().add(1).log()
    joint = sum(log_t[c][:, te["codes"][:, c]] for c in range(C)) + prior[:, None, None]
    return {"code_map_per_channel": per_channel,
            "code_naive_bayes_joint": float((joint.argmax(0) == te["truth"]).float().mean())}


def joint_context(d, k: int) -> torch.Tensor:
    """(B, N, (2k+1) C F): every channel's attributes at each time position and k positions either side."""
    return neighbour_context(d["attrs"].permute(0, 2, 1, 3).flatten(2), k)


def fit_probe(net, x, y, xt, yt, epochs: int) -> float:
    """Full-batch Adam on standardised inputs (statistics of the training tokens); test accuracy."""
    mean, std = x.flatten(0, -2).mean(0), x.flatten(0, -2).std(0) + 1e-6
    x, xt = (x - mean) / std, (xt - mean) / std
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(epochs):
        loss = F.cross_entropy(net(x).flatten(0, -2), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((net(xt).argmax(-1) == yt).float().mean())


def mlp_probe(tr, te, joint: bool, context: int = 0, epochs: int = 300, seed: int = 0) -> float:
    """An MLP on one token's attributes (joint=False), or on every channel's at its time position and
    `context` positions either side."""
    torch.manual_seed(seed)
    def xy(d):
        if joint:
            return joint_context(d, context).flatten(0, 1), d["truth"].flatten()
        a = d["attrs"]                                                                # (B, C, N, F)
        return a.flatten(0, 2), d["truth"][:, None].expand(a.shape[:3]).flatten()
    (x, y), (xt, yt) = xy(tr), xy(te)
    net = nn.Sequential(nn.Linear(x.shape[1], 128), nn.ReLU(), nn.Linear(128, len(PRIMITIVES)))
    return fit_probe(net, x, y, xt, yt, epochs)


def SequenceProbe(width: int, layers: int, hidden: int = 128) -> nn.Module:
    """Residual 1-D convolutions (kernel 5) over the token positions of every channel's attributes:
    `layers` of them see 2 * layers positions either side. The teacher's scores use the same reader
    (teachers/mmvqshape.py BinConvReader, `alignment.layers`). (B, N, W) -> (B, N, P)."""
    return BinConvReader(width, len(PRIMITIVES), hidden, layers)


def sequence_probe(tr, te, layers: int, epochs: int = 300, seed: int = 0) -> float:
    torch.manual_seed(seed)
    x, xt = joint_context(tr, 0), joint_context(te, 0)
    return fit_probe(SequenceProbe(x.shape[-1], layers), x, tr["truth"], xt, te["truth"], epochs)


def weak_em(tr, te, teacher, vmap, ordered: bool, p_stay: float, iters: int = 40) -> Dict[str, float]:
    """Batch EM of the per-channel code table from the class only (what the teacher's E-step does online)."""
    C, N, M = tr["codes"].shape[1], tr["codes"].shape[2], teacher.M
    table = CodeEmissions(C, M, teacher.cfg.num_code, decay=0.0, smoothing=0.1)
    bins = torch.arange(N).repeat(C)[None]                                            # rank = time position

    def emissions(d):
        ids = teacher.class_index[d["y"]]
        e = table.token_emissions(d["codes"], ids).flatten(1, 2)
        return pool_bins(e, bins.expand(len(ids), -1), N), ids, teacher.class_mask[d["y"]].sum(1)

    for _ in range(iters):
        emit, ids, n = emissions(tr)
        post = state_posteriors(emit, n, ordered, p_stay)                            # (B, N, K)
        table.update(tr["codes"], ids, post[:, None].expand(-1, C, -1, -1))
    log_t = table.log_table()
    prior = table.counts[0].sum(-1).add(1e-8).log()
    free = (sum(log_t[c][:, te["codes"][:, c]] for c in range(C)) + prior[:, None, None]).argmax(0)
    emit, ids, n = emissions(te)
    path, _ = chain_viterbi(emit, n, p_stay=p_stay)
    rep = {"label_free": float((vmap[free] == te["truth"]).float().mean()),
           "viterbi_given_class": float((vmap[ids.gather(1, path)] == te["truth"]).float().mean())}
    if ordered:   # the targets realignment starts from: the ordered E-step's posteriors on the training tokens
        emit, ids, n = emissions(tr)
        rep["targets"] = tokens_to_vocabulary(state_posteriors(emit, n, True, p_stay), ids, M)   # (B, N, M)
    return rep


def realign(tr, te, teacher, vmap, targets, p_stay: float, context: int, rounds: int = 4) -> List[Dict]:
    """Hybrid-HMM realignment from the class only (what alignment.scores_from_step does online): each
    round trains an MLP from scratch on the current soft targets (every channel's attributes at `context`
    positions either side, as the window scores read them), then re-runs the ordered E-step on its scaled
    likelihoods (log softmax - log mean softmax over training tokens) given the class. Per round: test
    accuracy of its label-free argmax and of the Viterbi path given the class; training-target accuracy."""
    x, xt = joint_context(tr, context), joint_context(te, context)
    mean, std = x.flatten(0, 1).mean(0), x.flatten(0, 1).std(0) + 1e-6
    x, xt = (x - mean) / std, (xt - mean) / std
    states = lambda d: (teacher.class_index[d["y"]], teacher.class_mask[d["y"]].sum(1))  # noqa: E731
    (ids, n), (ids_t, n_t) = states(tr), states(te)
    rows = []
    for r in range(rounds):
        torch.manual_seed(r)
        net = nn.Sequential(nn.Linear(x.shape[-1], 128), nn.ReLU(), nn.Linear(128, teacher.M))
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
        for _ in range(300):
            loss = -(targets * net(x).log_softmax(-1)).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            lp, lp_t = net(x).log_softmax(-1), net(xt).log_softmax(-1)
            log_prior = lp.exp().mean((0, 1)).clamp(min=1e-8).log()
            at = lambda v, i: (v - log_prior).gather(-1, i[:, None, :].expand(-1, v.shape[1], -1))  # noqa: E731
            path, _ = chain_viterbi(at(lp_t, ids_t), n_t, p_stay=p_stay)
            targets = tokens_to_vocabulary(state_posteriors(at(lp, ids), n, True, p_stay), ids, teacher.M)
            rows.append({"round": r + 1, "label_free": float((vmap[lp_t.argmax(-1)] == te["truth"]).float().mean()),
                         "viterbi_given_class": float((vmap[ids_t.gather(1, path)] == te["truth"]).float().mean()),
                         "train_targets": float((vmap[targets.argmax(-1)] == tr["truth"]).float().mean())})
    return rows


def report(run_dir: str) -> Dict:
    cfg = load_config(f"{run_dir}/config.yaml")
    splits = build_splits(cfg.data)
    teacher, _ = load_teacher(f"{run_dir}/teacher", splits)
    meta = json.loads(open(f"{run_dir}/teacher/meta.json").read())
    vmap = synthetic_vocab_map(meta["vocab_texts"], description_file(cfg.text, "synthetic"))
    tr, te = collect(teacher, splits.train), collect(teacher, splits.test)
    P = len(PRIMITIVES)
    rep = {"run_dir": str(run_dir), "test_tokens": int(te["truth"].numel()),
           "majority": float(torch.bincount(te["truth"].flatten(), minlength=P).max()) / te["truth"].numel(),
           **code_oracles(tr, te, teacher.cfg.num_code),
           "mlp_attrs_per_channel": mlp_probe(tr, te, joint=False), "mlp_attrs_joint": mlp_probe(tr, te, joint=True),
           **{f"mlp_attrs_joint_context{k}": mlp_probe(tr, te, joint=True, context=k) for k in (1, 2, 4)},
           "conv_attrs_3_layers": sequence_probe(tr, te, layers=3)}
    p = cfg.teacher.alignment.p_stay
    rep["em_set"] = weak_em(tr, te, teacher, vmap, ordered=False, p_stay=p)
    rep["em_ordered"] = weak_em(tr, te, teacher, vmap, ordered=True, p_stay=p)
    targets = rep["em_ordered"].pop("targets")
    for k in (1, 2):
        rep[f"realign_context{k}"] = realign(tr, te, teacher, vmap, targets, p, context=k)
    return rep


def main(argv=None):
    return main_over_runs(__doc__, report, argv)


if __name__ == "__main__":
    main()
