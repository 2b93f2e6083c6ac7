"""Where a distilled CNN student puts its tokens, and what that does to its sub-action recovery.

A CNN student's adapter predicts each teacher token's attributes, span start `t` and length `l` included
(`kd.attr`); its sub-action head's recovery (`student.subaction_recovery_scores`) is scored against the
ground truth under the student's *own* spans, as a deployed student would place them. This script
rebuilds a finished synthetic run's selected student (state/student_best.pt) and reports, on the test
windows: recovery under its own spans and under its teacher's spans (same head outputs), the argmax
agreement of head and teacher, the mean absolute error of t and l against the teacher's, and one window
per class spelled out token by token (truth, teacher, student).

    python -m experiments.receipts.student_spans runs/syn_rs130c2_tl1_s0 runs/syn_rs130c2_tl30_s0 [--out FILE]
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from experiments.run_reports import main_over_runs
from kd.evaluate import load_run
from kd.stages import build_distiller, load_teacher
from kd.reports import recovery_scorer
from kd.recovery import argmax_agreement, student_tokens


@torch.no_grad()
def report(run: Path) -> Dict:
    cfg, splits = load_run(run)
    teacher, meta = load_teacher(Path(cfg.teacher.checkpoint), splits,
                                 expect=OmegaConf.to_container(cfg.teacher, resolve=True))
    distiller = build_distiller(cfg, splits, teacher)
    distiller.load_state_dict(torch.load(run / "state" / "student_best.pt", map_location="cpu", weights_only=True))
    distiller.eval()
    score = recovery_scorer(cfg, splits, meta)

    def teacher_spans(x, y):   # the student's head outputs at its teacher's token spans
        out = teacher(x, keys="vocab", reconstruct=False)
        B = x.shape[0]
        return out["t"].reshape(B, -1, 1), out["l"].reshape(B, -1, 1), distiller.student_forward(x, None)[0].sub_logits

    err = {"t": [], "l": []}
    for b in DataLoader(splits.test, batch_size=64):
        s_attr = distiller.student_forward(b["x"], None)[0].attr
        out = teacher(b["x"], keys="vocab", reconstruct=False)
        for a in err:
            err[a].append((s_attr[a].flatten() - out[a].flatten()).abs())
    return {"run": str(run), "windows": per_class_windows(distiller, teacher, splits, meta, cfg),
            "recovery_own_spans": score(student_tokens(distiller, "sub_logits"))["token_acc"],
            "recovery_teacher_spans": score(teacher_spans)["token_acc"],
            "agreement_with_teacher_test": argmax_agreement(
                lambda x: distiller.student_forward(x, None)[0].sub_logits,
                lambda x, y: teacher.teach(x, y).sub_logits, splits.test),
            **{f"{a}_abs_error": float(torch.cat(v).mean()) for a, v in err.items()},
            "token_slot_width": 1 / (teacher.cfg.num_token)}


@torch.no_grad()
def per_class_windows(distiller, teacher, splits, meta, cfg) -> Dict[str, Dict[str, str]]:
    """The first test window of each class, channel 0's tokens in span order, one letter per primitive
    (a = the first of kd.data.synthetic.PRIMITIVES): the truth under the teacher's spans, the teacher's
    label-free scores, its Viterbi path given the class, and the student's head (signal only)."""
    from kd.data.synthetic import PRIMITIVES
    from kd.recovery import span_majority, synthetic_vocab_map
    from kd.text import description_file
    vmap = synthetic_vocab_map(meta["vocab_texts"], description_file(cfg.text, "synthetic"))
    b = next(iter(DataLoader(splits.test, batch_size=len(splits.test))))
    first = {int(c): int((b["y"] == c).nonzero()[0]) for c in b["y"].unique()}
    x, y = b["x"][list(first.values())], b["y"][list(first.values())]
    out = teacher(x, keys="vocab", reconstruct=False)
    N = out["t"].shape[1]                                                              # channel 0 = rows 0::C
    t, l = out["t"][::teacher.num_channels], out["l"][::teacher.num_channels]           # (W, N, 1)
    truth = span_majority(b["subaction"][list(first.values())], t, l, len(PRIMITIVES))
    viterbi = teacher.decode(out, y)["viterbi"][::teacher.num_channels]
    rows = {"truth": truth, "teacher label-free": vmap[out["sub_scores"][::teacher.num_channels].argmax(-1)],
            "teacher Viterbi given class": vmap[viterbi],
            "student head": vmap[distiller.student_forward(x, None)[0].sub_logits[:, :N].argmax(-1)]}
    letters = lambda row: "".join(chr(ord("a") + int(p)) for p in row)  # noqa: E731
    return {splits.class_names[c]: {k: letters(v[i]) for k, v in rows.items()} for i, c in enumerate(first)}


def main(argv=None):
    return main_over_runs(__doc__, report, argv)


if __name__ == "__main__":
    main()
