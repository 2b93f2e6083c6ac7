"""When two runs, or two teachers, are the same: the resolved config without what may change between reruns
into one run_dir and without what the run never reads (kd.pipeline refuses a run_dir of another config, kd.cv
reuses finished runs and keys its cached teachers by it)."""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

from omegaconf import OmegaConf

from kd.config import KD_LOSS_KEYS


# How a trained text-guided teacher teaches (which keys, which sub-action targets), relative to the teacher
# section: the pairing's choice, not part of what was trained. A checkpoint is taught from with the
# pairing's values (kd.stages.load_teacher) and a study shares one teacher across them (kd.cv.teacher_key).
TEACHING_KEYS = ("fusion.teach_keys",)

# Keys that may change between runs into one run_dir (what to do, not what is computed);
# train.num_threads changes speed only.
IGNORED_FOR_RERUN = ("stage", "resume", "overwrite", "train.num_threads")


def unread_keys(d: Dict) -> List[str]:
    """The sections a run with resolved config `d` never reads: without a teacher, everything about teaching; the
    sections of the architectures not chosen; teacher.alignment's parameters when it is off; the
    parameters of a KD loss at weight 0 and of a disabled workspace."""
    t, kd = d.get("teacher"), d.get("kd")
    if not isinstance(t, dict) or not isinstance(kd, dict):
        return []
    arch = t["arch"]
    keys = [f"student.{'cnn' if d['student']['arch'] == 'vqshape_student' else 'vqshape'}"]
    if arch == "none":
        return keys + ["teacher", "kd", "text", "train.teacher_epochs", "train.teacher_ssl_epochs",
                       "train.teacher_lr", "train.cache_teacher"]
    if arch != "vqshape":
        keys.append("teacher.vqshape")
    if arch != "vqshape" or not t["text_guidance"]:
        keys += ["teacher.fusion", "teacher.alignment", "text"]
    elif t["alignment"]["target"] == "none":
        keys += [f"teacher.alignment.{k}" for k in t["alignment"] if k != "target"]
    if arch == "vqshape":                               # a CNN teacher's sections
        keys += ["teacher.cnn", "teacher.members"]
    keys += [f"kd.{n}.{k}" for n in KD_LOSS_KEYS if not kd[n]["weight"] for k in kd[n] if k != "weight"]
    keys += [] if kd["workspace"]["enabled"] else [f"kd.workspace.{k}" for k in kd["workspace"] if k != "enabled"]
    return keys


def comparable(cfg, ignore: Sequence[str] = IGNORED_FOR_RERUN) -> Dict:
    """The resolved config as a dict without the `ignore` keys and the keys it never reads (unread_keys): what two
    runs must share to be the same run (or two teachers to be one)."""
    d = OmegaConf.to_container(cfg, resolve=True)
    ignore = (*ignore, *unread_keys(d))
    for key in ignore:
        *parents, leaf = key.split(".")
        node = d
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    return d


def config_diffs(a: Any, b: Any, prefix: str = "") -> List[tuple]:
    """(dotted key, value in a, value in b) for every leaf where two nested config dicts differ, by key."""
    if isinstance(a, dict) and isinstance(b, dict):
        return sorted((d for key in set(a) | set(b) for d in config_diffs(a.get(key), b.get(key), f"{prefix}{key}.")),
                      key=lambda d: d[0])
    return [(prefix.rstrip("."), a, b)] if a != b else []
