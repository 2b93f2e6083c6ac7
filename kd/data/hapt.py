"""UCI HAPT smartphone recordings, read from a folder in the UCI layout (data.hapt.root).

Reyes-Ortiz, Oneto, Samà, Parra, Anguita, "Transition-Aware Human Activity Recognition Using
Smartphones", Neurocomputing 171 (2016); UCI-HAR (Anguita et al., ESANN 2013) was cut from the same
recordings. A waist-worn phone, 50 Hz, 30 subjects, one or more scripted sessions ("experiments") each:

    <root>/RawData/acc_expXX_userYY.txt    one row per sample: x y z, accelerometer in g (gravity included)
    <root>/RawData/gyro_expXX_userYY.txt   one row per sample: x y z, gyroscope in rad/s
    <root>/RawData/labels.txt              one segment per row: experiment user activity first last
                                           (0-based samples, both ends included; rows outside every
                                           segment are unlabelled)

Activity ids 1-6 are UCI-HAR's activities, 7-12 the postural transitions. Channels: acc x y z, gyro x y z,
raw (no filtering, no gravity separation). Nothing is downloaded.

Windows (data.hapt.window samples, data.hapt.stride apart) are cut inside one labelled segment, so every
sample of a window has the window's label. A segment shorter than a window (postural transitions last
1.5-10 s; 7-29 of each transition's ~60 are under 2.56 s) gives one window centred on it, holding the
whole transition and its neighbours' edges, kept when the transition fills at least data.hapt.min_fill
of it (the fill of each such window is summarised in `info`). Task "activities" keeps ids 1-6 (UCI-HAR's
6 classes); "all" keeps the 12; "episodes" is one window of data.hapt.window samples centred on each postural
transition (usually posture, transition, posture), classed by its transition, with the truth of every time step
(EPISODE_TRUTH) as the item's "subaction": what sub-action recovery is scored against. Split by subject: default test subjects are UCI-HAR's
(2 4 9 10 12 13 18 20 24), validation the last 3 of the other sorted subject ids.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

from .core import DataError, Splits, TensorWindows, as_list, check_length, resample, subject_split

SAMPLE_RATE_HZ = 50
ACTIVITIES = ("WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING", "LAYING",
              "STAND_TO_SIT", "SIT_TO_STAND", "SIT_TO_LIE", "LIE_TO_SIT", "STAND_TO_LIE", "LIE_TO_STAND")
TASK_CLASSES = {"activities": 6, "all": 12}       # activity ids 1..n of each task
# task "episodes": one window around each postural transition, classed by the transition (ids 7-12), with
# the truth of every time step in these terms (the data set labels a transition as one segment, not its phases)
EPISODE_TRUTH = ("SITTING", "STANDING", "LAYING", "TRANSITION")
UCI_HAR_TEST_SUBJECTS = (2, 4, 9, 10, 12, 13, 18, 20, 24)
VAL_SUBJECTS_DEFAULT = 3                          # the last 3 sorted subject ids not in test
CHANNELS = ("acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z")
FILE_RE = re.compile(r"^(acc|gyro)_exp(\d+)_user(\d+)\.txt$")


@dataclass
class Session:
    """One scripted recording: the signal and its labelled segments."""
    experiment: int
    user: int
    signal: np.ndarray              # (T, 6) float32: acc x y z, gyro x y z
    segments: np.ndarray            # (S, 3) int64: activity id, first, last sample (inclusive)

    def sample_labels(self) -> np.ndarray:
        """(T,) activity id of every sample, 0 where unlabelled."""
        out = np.zeros(len(self.signal), dtype=np.int64)
        for act, a, b in self.segments:
            out[a:b + 1] = act
        return out


def read_rows(path: Path) -> np.ndarray:
    """A whitespace table of x y z rows -> float64 (T, 3); a DataError naming the file and line otherwise."""
    rows = [line.split() for line in path.read_text().splitlines()]
    for i, fields in enumerate(rows):
        if len(fields) != 3:
            raise DataError(f"{path}, line {i + 1}: expected 3 numbers (x y z), got {len(fields)} fields: {fields}")
    try:                             # re-raised with the file and line: a cell that is not a number
        table = np.array(rows, dtype=np.float64).reshape(-1, 3)
    except ValueError:
        bad = next(i for i, fields in enumerate(rows) if not all(map(_is_number, fields)))
        raise DataError(f"{path}, line {bad + 1}: not a number in {rows[bad]}") from None
    bad = np.argwhere(~np.isfinite(table))
    if len(bad):
        raise DataError(f"{path}, line {bad[0][0] + 1}: a non-finite value (NaN or inf); clean or drop it")
    if not len(table):
        raise DataError(f"{path} is empty")
    return table


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def read_labels(path: Path) -> np.ndarray:
    """labels.txt -> int64 (S, 5): experiment, user, activity, first, last; errors name the line."""
    if not path.is_file():
        raise DataError(f"{path} does not exist: a HAPT folder holds RawData/labels.txt (the labelled segments)")
    rows = []
    for i, line in enumerate(path.read_text().splitlines()):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5 or not all(f.isdigit() for f in fields):
            raise DataError(f"{path}, line {i + 1}: expected 5 non-negative integers "
                            f"(experiment user activity first last), got {line!r}")
        exp, user, act, first, last = map(int, fields)
        if not 1 <= act <= len(ACTIVITIES):
            raise DataError(f"{path}, line {i + 1}: unknown activity id {act} (known: 1..{len(ACTIVITIES)}, "
                            f"{', '.join(f'{k + 1} {n}' for k, n in enumerate(ACTIVITIES))})")
        if last < first:
            raise DataError(f"{path}, line {i + 1}: segment ends (sample {last}) before it starts ({first})")
        rows.append((exp, user, act, first, last, i + 1))
    if not rows:
        raise DataError(f"{path} holds no segments")
    return np.array(rows, dtype=np.int64)


def read_sessions(root: Any) -> List[Session]:
    """Every session of a HAPT folder with its segments, checked against each other before anything trains."""
    if root is None:
        raise DataError("data.hapt.root is not set: give the folder holding RawData/ (the UCI HAPT layout)")
    raw = Path(root) / "RawData"
    if not raw.is_dir():
        raise DataError(f"{raw} is not a folder: data.hapt.root={str(root)!r} must hold RawData/ with "
                        "acc_expXX_userYY.txt, gyro_expXX_userYY.txt and labels.txt")
    files: Dict[Tuple[int, int], Dict[str, Path]] = {}
    for p in sorted(raw.iterdir()):
        m = FILE_RE.match(p.name)
        if m:
            files.setdefault((int(m.group(2)), int(m.group(3))), {})[m.group(1)] = p
    labels = read_labels(raw / "labels.txt")
    sessions = []
    for (exp, user), pair in sorted(files.items()):
        for kind, other in (("acc", "gyro"), ("gyro", "acc")):
            if kind in pair and other not in pair:
                raise DataError(f"{pair[kind]} has no {other} file beside it "
                                f"({other}_exp{exp:02d}_user{user:02d}.txt): every session needs both")
        acc, gyro = read_rows(pair["acc"]), read_rows(pair["gyro"])
        if len(acc) != len(gyro):
            raise DataError(f"{pair['acc']} has {len(acc)} rows but {pair['gyro']} has {len(gyro)}: "
                            "the two sensors of a session must have one row per sample each")
        segs = labels[labels[:, 0] == exp]
        wrong_user = segs[segs[:, 1] != user]
        if len(wrong_user):
            raise DataError(f"{raw / 'labels.txt'}, line {wrong_user[0, 5]}: experiment {exp} is user {user}'s "
                            f"(file {pair['acc'].name}) but the line says user {wrong_user[0, 1]}")
        past = segs[segs[:, 4] >= len(acc)]
        if len(past):
            raise DataError(f"{raw / 'labels.txt'}, line {past[0, 5]}: segment ends at sample {past[0, 4]} but "
                            f"{pair['acc'].name} has {len(acc)} samples (0..{len(acc) - 1})")
        signal = np.concatenate([acc, gyro], axis=1).astype(np.float32)        # (T, 6)
        sessions.append(Session(exp, user, signal, segs[:, 2:5].copy()))
    known = {s.experiment for s in sessions}
    orphan = labels[~np.isin(labels[:, 0], list(known))]
    if len(orphan):
        raise DataError(f"{raw / 'labels.txt'}, line {orphan[0, 5]}: experiment {orphan[0, 0]} has no "
                        f"acc/gyro files in {raw}")
    return sessions


def segment_windows(first: int, last: int, T: int, window: int, stride: int,
                    min_fill: float) -> Tuple[np.ndarray, float]:
    """Start samples of the windows of one segment [first, last] of a session of T samples, and the share
    of each window the segment fills (1 inside long segments; a short segment gets one centred window)."""
    n = last - first + 1
    if n >= window:
        return np.arange(first, last - window + 2, stride), 1.0
    fill = n / window
    if fill < min_fill or window > T:
        return np.zeros(0, dtype=np.int64), fill
    start = min(max(first + n // 2 - window // 2, 0), T - window)              # centred, inside the session
    return np.array([start]), fill


def cut_sessions(sessions: List[Session], cfg: Any) -> Dict[str, Any]:
    """Windows [N, C, window] of the task's classes with labels (0-based), subjects and session index."""
    h = cfg.hapt
    if h.window < 2 or h.stride < 1:
        raise DataError(f"data.hapt.window={h.window} must be >= 2 and data.hapt.stride={h.stride} >= 1")
    if not 0 < h.min_fill <= 1:
        raise DataError(f"data.hapt.min_fill={h.min_fill} must lie in (0, 1]")
    n_classes = TASK_CLASSES[h.task]
    x, y, subj, sess, fills = [], [], [], [], []
    dropped = 0
    for k, s in enumerate(sessions):
        for act, first, last in s.segments:
            if act > n_classes:
                continue
            starts, fill = segment_windows(int(first), int(last), len(s.signal), h.window, h.stride, h.min_fill)
            dropped += not len(starts)
            if fill < 1 and len(starts):
                fills.append(fill)
            idx = starts[:, None] + np.arange(h.window)                          # (n, window)
            x.append(s.signal[idx].transpose(0, 2, 1))                           # (n, C, window)
            y.append(np.full(len(starts), act - 1))
            subj.append(np.full(len(starts), s.user))
            sess.append(np.full(len(starts), k))
    return {"x": np.concatenate(x), "y": np.concatenate(y).astype(np.int64),
            "subject": np.concatenate(subj).astype(np.int64), "session": np.concatenate(sess),
            "short_segments": {"windows": len(fills), "dropped": dropped,
                               "fill_min": round(min(fills), 3) if fills else None,
                               "fill_mean": round(float(np.mean(fills)), 3) if fills else None}}


def default_test_subjects(cfg: Any, known: List[int]) -> List[int]:
    if cfg.test_subjects is not None:
        return as_list(cfg.test_subjects)
    return [s for s in UCI_HAR_TEST_SUBJECTS if s in known]


def episode_truth(labels: np.ndarray) -> np.ndarray:
    """Activity ids -> EPISODE_TRUTH ids: the postures 4-6 -> 0-2, any transition 7-12 -> 3; unlabelled samples
    and the walking activities 1-3 (not a posture nor a transition) -> -1, scored nowhere."""
    lut = np.full(len(ACTIVITIES) + 1, -1, dtype=np.int64)
    lut[4:7], lut[7:] = (0, 1, 2), 3
    return lut[labels]


def cut_episodes(sessions: List[Session], window: int) -> Dict[str, Any]:
    """Task "episodes": transition_episodes as the windows of a classification task (class = the transition)."""
    ep = transition_episodes(sessions, window)
    return {"x": ep.x, "y": ep.transition - (TASK_CLASSES["activities"] + 1), "subject": ep.subject,
            "session": ep.session, "truth": episode_truth(ep.labels)}


def build_hapt(cfg: Any) -> Splits:
    length = check_length(cfg.length)
    sessions = read_sessions(cfg.hapt.root)
    episodes = cfg.hapt.task == "episodes"
    w = cut_episodes(sessions, cfg.hapt.window) if episodes else cut_sessions(sessions, cfg)
    known = sorted({s.user for s in sessions})
    test = default_test_subjects(cfg, known)
    val = as_list(cfg.val_subjects)
    if val is None:
        val = [s for s in known if s not in test][-VAL_SUBJECTS_DEFAULT:]
    index, how = subject_split(w["subject"], test, val, 0.0, 0.0)
    if cfg.test_subjects is None:
        how["test_subjects_from"] = "default: UCI-HAR's test subjects (2 4 9 10 12 13 18 20 24)"
    if cfg.val_subjects is None:
        how["val_subjects_from"] = f"default: the last {VAL_SUBJECTS_DEFAULT} of the sorted subject ids not in test"
    x = resample(torch.from_numpy(w["x"]), length)                               # (N, C, L) float32
    # per-step truth: the label of the raw sample nearest each resampled step (resample's positions)
    truth = torch.from_numpy(w["truth"][:, np.rint(np.linspace(0, cfg.hapt.window - 1, length)).astype(int)]) \
        if episodes else None
    sets = {s: TensorWindows(x[i].contiguous(), w["y"][i], w["subject"][i], recordings=w["session"][i],
                             subaction=None if truth is None else truth[i].contiguous())
            for s, i in index.items()}
    names = list(ACTIVITIES[TASK_CLASSES["activities"]:]) if episodes else list(ACTIVITIES[:TASK_CLASSES[cfg.hapt.task]])
    details = {"source": str(Path(cfg.hapt.root)), "task": cfg.hapt.task, "dataset_classes": list(ACTIVITIES),
               "sample_rate_hz": SAMPLE_RATE_HZ, "channels": list(CHANNELS), "sessions": len(sessions),
               "window": cfg.hapt.window, "resampled": f"{cfg.hapt.window} -> {length}",
               "windows_per_class": dict(zip(names, map(int, np.bincount(w["y"], minlength=len(names)))))}
    if episodes:
        counts = np.bincount(w["truth"].ravel() + 1, minlength=len(EPISODE_TRUTH) + 1) / w["truth"].size
        details["step_truth"] = {"labels": list(EPISODE_TRUTH),
                                 "share": dict(zip(("none",) + EPISODE_TRUTH, (round(float(c), 4) for c in counts)))}
    else:
        details.update(stride=cfg.hapt.stride, short_segments=w["short_segments"])
    return Splits(**sets, class_names=names, num_channels=x.shape[1], length=length,
                  name="hapt", split=how, details=details)


@dataclass
class Episodes:
    """Windows that span several labelled segments around each postural transition, with the per-sample
    truth a sub-action method never sees (issue: sub-actions against recorded ground truth)."""
    x: np.ndarray                   # (N, C, length) float32, raw samples
    labels: np.ndarray              # (N, length) int64 activity id of every sample, 0 where unlabelled
    transition: np.ndarray          # (N,) int64 activity id (7-12) of the transition each episode is centred on
    subject: np.ndarray             # (N,) int64
    session: np.ndarray             # (N,) int64 index of the episode's session

    def transcript(self, i: int) -> List[int]:
        """The activity ids episode i runs through, in order (runs of one id collapsed, unlabelled gaps left out)."""
        ids = self.labels[i][self.labels[i] > 0]
        return [int(a) for k, a in enumerate(ids) if k == 0 or a != ids[k - 1]]


def transition_episodes(sessions: List[Session], length: int = 500) -> Episodes:
    """One window of `length` samples (500: 10 s) centred on each transition segment (activity id > 6) that
    lies far enough from its session's ends; usually posture, transition, posture."""
    if length < 2:
        raise DataError(f"data.hapt.window={length} (the episode length) must be >= 2")
    x, labels, trans, subj, sess = [], [], [], [], []
    for k, s in enumerate(sessions):
        truth = s.sample_labels()
        for act, first, last in s.segments:
            start = (int(first) + int(last) + 1) // 2 - length // 2
            if act <= TASK_CLASSES["activities"] or start < 0 or start + length > len(s.signal):
                continue
            x.append(s.signal[start:start + length].T)
            labels.append(truth[start:start + length])
            trans.append(int(act))
            subj.append(s.user)
            sess.append(k)
    if not x:
        raise DataError(f"no transition segment lies {length // 2} samples from both ends of its session; "
                        f"shorten the episode length ({length})")
    return Episodes(np.stack(x).astype(np.float32), np.stack(labels), np.array(trans), np.array(subj), np.array(sess))
