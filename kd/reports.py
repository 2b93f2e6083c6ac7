"""What a run reports on held-out subjects: each model's test metrics, a VQShape teacher's health figures,
and what teacher and student know of sub-actions (the research reports: synthetic recovery, the ordered
alignment's own report)."""
from __future__ import annotations

from typing import Dict, Optional

import torch.nn as nn
from accelerate import Accelerator

from kd.engine import eval_loader, evaluate
from kd.layers import param_count
from kd.vqshape import VQShape
from teachers.ensemble import Ensemble
from teachers.mmvqshape import MMVQShape


def test_report(accel: Accelerator, cfg, splits, predict, model: nn.Module, extra: Optional[Dict] = None) -> Dict:
    """Test-split metrics of `predict` (a batch -> logits), gathered over the run's processes."""
    model.to(accel.device).eval()
    loader = accel.prepare(eval_loader(splits.test, cfg.data.eval_batch_size))
    report = evaluate(accel, predict, loader, splits.class_names)
    report["params"] = param_count(model)
    report.update(extra or {})
    return report


def teacher_health(teacher, splits, accel: Accelerator) -> Dict:
    """Health figures of a VQShape teacher on the held-out windows (teachers/health.py), with a loud
    warning in the log when its tokens have collapsed."""
    from teachers.health import format_health, health_report
    report = health_report(teacher, splits.test)
    accel.print(("[teacher] health: " if not report["collapsed"] else "[teacher] WARNING health: ")
                + format_health(report))
    return report


def recovery_scorer(cfg, splits, t_meta: Optional[Dict]):
    """(token_fn, dataset = the test split) -> sub-action recovery, when the windows carry the truth of every
    time step (synthetic data, HAPT's transition episodes) and the teacher has sub-actions; else None."""
    episodes = cfg.data.name == "hapt" and cfg.data.hapt.task == "episodes"
    if not (cfg.data.name == "synthetic" or episodes) or not t_meta or "vocab_texts" not in t_meta:
        return None
    from kd.recovery import hapt_vocab_map, subaction_recovery, synthetic_vocab_map
    from kd.text import description_file
    path = description_file(cfg.text, cfg.data.name)
    if episodes:
        from kd.data.hapt import EPISODE_TRUTH as labels
        vmap = hapt_vocab_map(t_meta["vocab_texts"], path)
    else:
        from kd.data.synthetic import PRIMITIVES as labels
        vmap = synthetic_vocab_map(t_meta["vocab_texts"], path)
    return lambda token_fn, dataset=splits.test: subaction_recovery(token_fn, dataset, vmap, len(labels))


def subaction_report(cfg, splits, teacher, t_meta: Optional[Dict]) -> Dict:
    """What a teacher knows of sub-actions: on synthetic data, the recovery of its action decoder and (with
    an alignment target) of its label-free scores and its Viterbi path; with an alignment target, the
    alignment report. Held-out test windows, except the scores' `_val` figure (the validation subjects,
    for choosing the alignment's settings without the test subjects)."""
    report, aligned = {}, isinstance(teacher, MMVQShape) and teacher.aligned
    score = recovery_scorer(cfg, splits, t_meta)
    if score is not None:
        from kd.recovery import teacher_tokens, teacher_viterbi_tokens
        report["subaction_recovery"] = score(teacher_tokens(teacher))
        if aligned:
            report["subaction_recovery_scores"] = score(teacher_tokens(teacher, "sub_scores"))
            report["subaction_recovery_viterbi"] = score(teacher_viterbi_tokens(teacher))
            report["subaction_recovery_scores_val"] = score(teacher_tokens(teacher, "sub_scores"), splits.val)
    if aligned:
        from kd.recovery import alignment_report
        report["alignment"] = alignment_report(teacher, splits.test)
    return report


def evaluate_teacher(accel: Accelerator, cfg, splits, teacher, extra: Dict, t_meta: Dict) -> Dict:
    report = test_report(accel, cfg, splits, lambda b: teacher.predict(b["x"]), teacher, extra)
    if isinstance(teacher, VQShape):
        report["health"] = teacher_health(teacher, splits, accel)
    if isinstance(teacher, Ensemble):   # an ensemble: each member's own held-out score beside the ensemble's
        report["member_macro_f1"] = [test_report(accel, cfg, splits, lambda b, m=m: m.predict(b["x"]), m)["macro_f1"]
                                     for m in teacher.members]
    report.update(subaction_report(cfg, splits, teacher, t_meta))
    if teacher.num_actions:  # text-guided: the class-text number is a diagnostic, named as such
        oracle = test_report(accel, cfg, splits, lambda b: teacher(b["x"], b["y"], keys="class", reconstruct=False)["logits"],
                             teacher)
        report["oracle_class_text_accuracy"] = oracle["accuracy"]
        report["oracle_class_text_macro_f1"] = oracle["macro_f1"]
    return report


def student_subaction_report(splits, distiller, teacher, score) -> Dict:
    """What a distilled student tells of sub-actions: on synthetic data (`score`, recovery_scorer's) the
    recovery of its action tokens and of its sub-action head; with a sub-action head, its label-free
    agreement with the teacher on the validation subjects (what a sub_kl setting may be chosen by)."""
    report = {}
    if score is not None and distiller.has_action_tokens():
        from kd.recovery import student_tokens
        report["subaction_recovery"] = score(student_tokens(distiller.eval()))
        if distiller.sub_head is not None:   # the head distilled from the teacher's sub-action scores
            from kd.recovery import Transcripts, given_class_tokens
            report["subaction_recovery_scores"] = score(student_tokens(distiller, "sub_logits"))
            report["subaction_recovery_given_class"] = score(given_class_tokens(student_tokens(distiller, "sub_logits"),
                                                                                Transcripts.of(teacher)))
            report["subaction_recovery_scores_val"] = score(student_tokens(distiller, "sub_logits"), splits.val)
    if distiller.sub_head is not None and len(splits.val):
        from kd.recovery import argmax_agreement
        distiller.eval()
        report["sub_agreement_val"] = argmax_agreement(lambda x: distiller.student_forward(x, None)[0].sub_logits,
                                                       lambda x, y: teacher.teach(x, y).sub_logits, splits.val)
    return report
