"""HAPT loader on a tiny folder in the UCI layout written here: windows cut inside labelled segments (a
round trip through sample ids written into the signal), short transitions centred, the two tasks, the
subject split, the info command, and an error naming the file and line for each kind of bad input."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kd.config import ConfigError, load_config
from kd.data import DataError, build_splits
from kd.data.__main__ import main as cli_main
from kd.data.hapt import read_sessions, segment_windows

T = 600
# (activity id, first, last): walking, a 80-sample stand-to-sit (shorter than a 128 window), sitting
SEGMENTS = [(1, 10, 299), (7, 300, 379), (4, 380, 599)]


def write_folder(root: Path, users=(1, 2, 3, 4, 5), segments=SEGMENTS, length=T) -> Path:
    """One session per user; acc x holds the sample index, acc y the experiment, acc z the user."""
    raw = root / "RawData"
    raw.mkdir(parents=True)
    rows = []
    for exp, user in enumerate(users, start=1):
        t = np.arange(length)
        acc = np.stack([t, np.full(length, exp), np.full(length, user)], 1)
        gyro = np.stack([np.sin(t / 10.0), np.cos(t / 10.0), np.zeros(length)], 1)
        np.savetxt(raw / f"acc_exp{exp:02d}_user{user:02d}.txt", acc, fmt="%.8e")
        np.savetxt(raw / f"gyro_exp{exp:02d}_user{user:02d}.txt", gyro, fmt="%.8e")
        rows += [f"{exp} {user} {a} {b} {c}" for a, b, c in segments]
    (raw / "labels.txt").write_text("\n".join(rows) + "\n")
    return root


def hapt_cfg(root: Path, *overrides: str):
    return load_config(overrides=["data.name=hapt", f"data.hapt.root={root}", "data.length=128",
                                  "data.test_subjects=[1]", "data.val_subjects=[2]", *overrides]).data


def test_windows_lie_inside_their_segment_and_round_trip(tmp_path):
    root = write_folder(tmp_path)
    splits = build_splits(hapt_cfg(root))
    assert splits.num_channels == 6 and splits.length == 128 and len(splits.class_names) == 12
    for ds in splits.datasets().values():
        x = ds.x.numpy()                                                     # (N, 6, 128)
        start = x[:, 0, 0].round().astype(int)
        assert np.allclose(x[:, 0], start[:, None] + np.arange(128))         # contiguous raw samples
        assert np.array_equal(x[:, 2, 0].astype(int), ds.subjects)            # each window's own user
        for s, label in zip(start, ds.labels):
            act, first, last = next(seg for seg in SEGMENTS if seg[0] == label + 1)
            if last - first + 1 >= 128:
                assert first <= s and s + 127 <= last                        # inside its segment
            else:                                                            # the short one: centred on it
                assert s <= first and last <= s + 127 and abs((s + 63.5) - (first + last) / 2) <= 1
    per_user = {1: 3, 4: 2, 7: 1}                                           # windows of walking, sitting, transition
    counts = np.bincount(splits.train.labels, minlength=12)
    assert {k: counts[k - 1] // 3 for k in per_user} == per_user             # 3 training users
    assert splits.info()["short_segments"]["fill_min"] == round(80 / 128, 3)


def test_segment_windows_brute_force():
    for first, last, T_, w, stride in [(0, 299, 600, 128, 64), (5, 132, 600, 128, 64), (10, 500, 510, 50, 7)]:
        starts, fill = segment_windows(first, last, T_, w, stride, 0.5)
        brute = [s for s in range(first, last + 1, stride) if s + w - 1 <= last]
        assert starts.tolist() == brute and fill == 1.0
    starts, fill = segment_windows(590, 599, 600, 16, 8, 0.5)               # short, at the session's end
    assert starts.tolist() == [584] and fill == 10 / 16
    assert segment_windows(0, 9, 600, 128, 64, 0.5)[0].size == 0           # fills 0.08 < min_fill: no window


def test_activities_task_and_default_split(tmp_path):
    root = write_folder(tmp_path, users=tuple(range(1, 31)))
    cfg = load_config(overrides=["data.name=hapt", f"data.hapt.root={root}", "data.length=64",
                                 "data.hapt.task=activities"]).data
    splits = build_splits(cfg)
    assert splits.class_names == ["WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING",
                                  "LAYING"]
    assert splits.length == 64 and splits.train.x.shape[-1] == 64           # resampled 128 -> 64
    assert splits.split["test_subjects"] == [2, 4, 9, 10, 12, 13, 18, 20, 24]   # UCI-HAR's
    assert splits.split["val_subjects"] == [28, 29, 30]
    assert set(np.unique(splits.train.labels)) == {0, 3}                    # the transition is not a class here


def test_info_command_prints_windows_per_class(tmp_path):
    root = write_folder(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli_main(["info", "--dataset", "hapt", f"hapt.root={root}", "test_subjects=[1]", "val_subjects=[2]"])
    info = json.loads(out.getvalue())
    assert info["num_channels"] == 6 and info["subjects"]["test"] == [1]
    assert info["windows_per_class"]["WALKING"] == 15 and info["windows_per_class"]["STAND_TO_SIT"] == 5


def test_missing_root_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="data.hapt.root"):
        load_config(overrides=["data.name=hapt"])
    with pytest.raises(ConfigError, match="no RawData"):
        load_config(overrides=["data.name=hapt", f"data.hapt.root={tmp_path}"])


def break_file(root: Path, name: str, edit) -> None:
    path = root / "RawData" / name
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


@pytest.mark.parametrize("name,edit,message", [
    ("acc_exp02_user02.txt", lambda ls: ls[:4] + ["1.0 2.0"] + ls[5:], r"acc_exp02_user02.txt, line 5: expected 3"),
    ("gyro_exp01_user01.txt", lambda ls: ls[:2] + ["1.0 x 3.0"] + ls[3:], r"gyro_exp01_user01.txt, line 3: not a number"),
    ("labels.txt", lambda ls: ls[:1] + ["1 1 13 300 379"] + ls[2:], r"labels.txt, line 2: unknown activity id 13"),
    ("labels.txt", lambda ls: ls[:2] + ["1 1 4 380 600"] + ls[3:], r"labels.txt, line 3: segment ends at sample 600"),
    ("labels.txt", lambda ls: ls + ["1 1 4"], r"labels.txt, line 16: expected 5 non-negative integers"),
    ("labels.txt", lambda ls: ls + ["9 1 4 0 10"], r"labels.txt, line 16: experiment 9 has no acc/gyro"),
    ("acc_exp03_user03.txt", lambda ls: ls[:-1], r"has 599 rows but .*gyro_exp03_user03.txt has 600"),
])
def test_bad_files_name_the_file_and_line(tmp_path, name, edit, message):
    root = write_folder(tmp_path)
    break_file(root, name, edit)
    with pytest.raises(DataError, match=message):
        read_sessions(root)


def test_a_session_without_its_gyro_file(tmp_path):
    root = write_folder(tmp_path)
    (root / "RawData" / "gyro_exp04_user04.txt").unlink()
    with pytest.raises(DataError, match=r"acc_exp04_user04.txt has no gyro file"):
        read_sessions(root)


def test_hapt_text_shares_the_transitions_phases(tmp_path):
    """The 12 classes' sub-actions: each transition starts and ends on its postures' own entries and shares
    its movements with the transitions that make them (stand-to-lie sits down as stand-to-sit does)."""
    from kd.data.hapt import ACTIVITIES
    from kd.text import build_text_bank
    from kd.config import TextConfig
    bank = build_text_bank(TextConfig(cache_dir=str(tmp_path / "text")), list(ACTIVITIES), "hapt")
    idx = {name: [int(i) for i in bank.class_index[c] if i >= 0] for c, name in enumerate(ACTIVITIES)}
    posture = {p: idx[p][0] for p in ("SITTING", "STANDING", "LAYING")}
    for name, (start, end) in {"STAND_TO_SIT": ("STANDING", "SITTING"), "SIT_TO_STAND": ("SITTING", "STANDING"),
                               "SIT_TO_LIE": ("SITTING", "LAYING"), "LIE_TO_SIT": ("LAYING", "SITTING"),
                               "STAND_TO_LIE": ("STANDING", "LAYING"), "LIE_TO_STAND": ("LAYING", "STANDING")}.items():
        assert idx[name][0] == posture[start] and idx[name][-1] == posture[end], name
    assert idx["STAND_TO_LIE"][1:3] == idx["STAND_TO_SIT"][1:3]            # sitting down, seat contact
    assert idx["STAND_TO_LIE"][3] == idx["SIT_TO_LIE"][1]                  # lying back
    assert idx["LIE_TO_STAND"][1:3] == idx["LIE_TO_SIT"][1:3]              # sitting up, legs down
    assert idx["LIE_TO_STAND"][3:6] == idx["SIT_TO_STAND"][1:4]            # lean, rise, straighten
    walking = set(idx["WALKING"]) | set(idx["WALKING_UPSTAIRS"]) | set(idx["WALKING_DOWNSTAIRS"])
    assert len(walking) == 10                                              # gait phases are not merged
    assert bank.M == len(set(bank.vocab_texts)) == 29


def test_the_anchor_config_trains_on_a_hapt_folder(tmp_path):
    import distill
    root = write_folder(tmp_path / "hapt")
    run_dir = tmp_path / "run"
    distill.main(["--config", "configs/hapt/uci_har_wrn16_1.yaml", f"data.hapt.root={root}", "data.test_subjects=[1]",
                  "data.val_subjects=[2]", "data.batch_size=8", "train.max_steps=2", "train.epochs=1",
                  f"run_dir={run_dir}"])
    results = json.loads((run_dir / "results.json").read_text())
    assert results["data"]["task"] == "activities" and results["baseline"]["n"] == 5     # user 1: 3 + 2 windows
    assert set(results["baseline"]["per_class_f1"]) == {"WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS",
                                                         "SITTING", "STANDING", "LAYING"}


def test_transition_episodes_carry_the_per_sample_truth_in_order(tmp_path):
    """An episode is the raw samples around a transition with each sample's recorded label: here walking,
    stand-to-sit, sitting, in that order, the transition in the middle; too long an episode is an error."""
    from kd.data.hapt import transition_episodes
    sessions = read_sessions(write_folder(tmp_path, users=(1, 2)))
    ep = transition_episodes(sessions, length=200)
    assert ep.x.shape == (2, 6, 200) and list(ep.transition) == [7, 7] and list(ep.subject) == [1, 2]
    start = 340 - 100                                                        # transition 300..379, centred
    assert np.array_equal(ep.x[0, 0], np.arange(start, start + 200))         # acc x holds the sample index
    assert np.array_equal(ep.labels[0], sessions[0].sample_labels()[start:start + 200])
    assert ep.transcript(0) == [1, 7, 4] and (ep.labels[0] == 7).sum() == 80
    with pytest.raises(DataError, match="shorten the episode length"):
        transition_episodes(sessions, length=700)


# Episodes: a session of postures and transitions; acc z is the posture's offset (standing 1, sitting 0.3, lying
# -0.6), ramping across a transition while the gyroscope turns, so what is where can be read off the signal.
POSTURE_Z = {5: 1.0, 4: 0.3, 6: -0.6}
SCRIPT = [(5, 300), (7, 80), (4, 300), (9, 100), (6, 300), (10, 90), (4, 300), (8, 80), (5, 300)]
FROM_TO = {7: (5, 4), 8: (4, 5), 9: (4, 6), 10: (6, 4), 11: (5, 6), 12: (6, 5)}


def write_episode_folder(root: Path, users=(1, 2, 3, 4, 5, 6)) -> Path:
    raw = root / "RawData"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows, z, segs, t = [], [], [], 0
    for act, n in SCRIPT:
        a, b = FROM_TO.get(act, (act, act))
        z.append(np.linspace(POSTURE_Z[a], POSTURE_Z[b], n))
        segs.append((act, t, t + n - 1))
        t += n
    z = np.concatenate(z)
    for exp, user in enumerate(users, start=1):
        acc = np.stack([np.zeros(t), np.zeros(t), z], 1) + 0.02 * rng.standard_normal((t, 3))
        gyro = np.stack([np.gradient(z) * 20, np.zeros(t), np.zeros(t)], 1) + 0.02 * rng.standard_normal((t, 3))
        np.savetxt(raw / f"acc_exp{exp:02d}_user{user:02d}.txt", acc, fmt="%.6e")
        np.savetxt(raw / f"gyro_exp{exp:02d}_user{user:02d}.txt", gyro, fmt="%.6e")
        rows += [f"{exp} {user} {a} {b} {c}" for a, b, c in segs]
    (raw / "labels.txt").write_text("\n".join(rows) + "\n")
    return root


def test_the_episodes_task_classes_each_transition_and_carries_its_step_truth(tmp_path):
    """task=episodes: one window per transition, classed by it (STAND_TO_SIT = 0 ...), the truth of every step
    (sitting 0, standing 1, lying 2, transition 3; walking and unlabelled -1) taken at the raw sample nearest
    each resampled step; no resampling = the recorded labels themselves."""
    from kd.data.hapt import ACTIVITIES, episode_truth, transition_episodes
    root = write_folder(tmp_path / "one", users=(1, 2, 3))
    same = build_splits(hapt_cfg(root, "data.hapt.task=episodes", "data.hapt.window=200", "data.length=200",
                             "teacher.arch=none"))
    assert same.class_names == list(ACTIVITIES[6:]) and same.details["dataset_classes"] == list(ACTIVITIES)
    item = same.test[0]
    start = int(item["x"][0, 0])                                              # acc x holds the sample index
    labels = read_sessions(root)[0].sample_labels()[start:start + 200]
    assert item["y"] == 0 and torch.equal(item["subaction"], torch.from_numpy(episode_truth(labels)))
    assert set(item["subaction"].tolist()) == {-1, 3, 0}                     # walking, stand-to-sit, sitting
    assert episode_truth(np.arange(13)).tolist() == [-1, -1, -1, -1, 0, 1, 2, 3, 3, 3, 3, 3, 3]
    half = build_splits(hapt_cfg(root, "data.hapt.task=episodes", "data.hapt.window=200", "data.length=100",
                             "teacher.arch=none"))
    x, truth = half.test[0]["x"][0], half.test[0]["subaction"]
    nearest = torch.round(x - start).long()                                   # resampled index -> raw sample
    assert torch.equal(truth, torch.from_numpy(episode_truth(labels))[nearest])
    ep = transition_episodes(read_sessions(write_episode_folder(tmp_path / "many")), 200)
    assert sorted(set(ep.transition.tolist())) == [7, 8, 9, 10] and len(ep.transition) == 6 * 4


def test_the_episodes_study_reports_every_figure_the_issue_names(tmp_path, text_cache):
    """One tiny ordered run placed as the study's unit: the run reports the teacher's label-free and given-class
    recovery and the student's, and the study tool turns it into the table, ceiling and majority included."""
    import distill
    from experiments.hapt_subactions import report, table
    from tests.conftest import vq_overrides
    hapt = write_episode_folder(tmp_path / "hapt")
    root = tmp_path / "study"
    distill.main(["--config", "configs/hapt/episodes_subactions.yaml", f"data.hapt.root={hapt}", "data.hapt.window=200",
                  "data.length=64", "data.test_subjects=[1]", "data.val_subjects=[2]", f"run_dir={root}/ordered/fold0_s0",
                  f"text.cache_dir={text_cache}", "train.max_steps=3", "teacher.alignment.scores_from_step=1",
                  "kd.workspace.num_slots=3", *vq_overrides("teacher")])
    results = json.loads((root / "ordered/fold0_s0/results.json").read_text())
    steps = 4 * 64                                                            # 4 test episodes, every step labelled
    assert results["teacher"]["subaction_recovery_viterbi"]["steps"] == steps
    assert results["student"]["subaction_recovery_given_class"]["steps"] == steps
    rep = report(root, str(hapt))
    for m in ("teacher", "set_only", "student"):                              # the keys the issue names
        assert set(rep["methods"][m]) >= {"step_acc_label_free", "step_acc_given_class"}
    assert 0 <= rep["methods"]["teacher"]["step_acc_label_free"] <= 1 and rep["methods"]["set_only"]["macro_f1"] is None
    assert rep["spread"]["methods"]["teacher"]["step_acc_label_free"]["n"] == 1
    assert 0 < rep["majority"] < 1 and 0 <= rep["ceiling"] <= 1 and rep["shuffled"] is None
    assert {"shuffled", "reversed"} <= set(rep) and "supervised ceiling" in table(rep)
    # the rhythm tool on the same run: a cycle-check share, and a run agrees with itself across "seeds"
    from experiments.alignment_rhythm import main as rhythm, seed_ari
    rows = rhythm([str(root / "ordered/fold0_s0")])
    assert 0.0 <= rows[0]["cycle_pass"] <= 1.0 and rows[0]["windows"] == 4
    ari = seed_ari([root / "ordered/fold0_s0"] * 2)
    assert ari == pytest.approx(1.0) or np.isnan(ari)
    # the exported student tells each window's sub-actions without the teacher: segments of the window's own
    # samples, contiguous, naming sentences; given the predicted class, only that class's sub-actions, in order
    from kd.data.hapt import transition_episodes
    from kd.predict import main as predict
    shutil.rmtree(root / "ordered/fold0_s0/teacher")
    ep = transition_episodes(read_sessions(hapt), 200)
    np.savez(tmp_path / "episodes.npz", X=ep.x[:3].transpose(0, 2, 1), y=ep.transition[:3] - 7)
    out = predict(["--model", str(root / "ordered/fold0_s0/student"), "--npz", str(tmp_path / "episodes.npz"),
                   "--timeline", str(tmp_path / "tl.json"), "--plot", str(tmp_path / "png")])
    tl = json.loads((tmp_path / "tl.json").read_text())
    meta = json.loads((root / "ordered/fold0_s0/student/meta.json").read_text())
    assert tl["vocabulary"] == meta["timeline"]["vocab_texts"] and len(tl["windows"]) == 3 == len(out["plots"])
    vocab = read_vocab_transcripts(text_cache)
    for w in tl["windows"]:
        for key in ("label_free", "given_class"):
            seg = w[key]
            assert seg[0][0] == 0 and seg[-1][1] == 199 and all(a[1] + 1 == b[0] for a, b in zip(seg, seg[1:]))
            assert all(0 <= v < len(tl["vocabulary"]) for _, _, v in seg)
        said = [tl["vocabulary"][v] for _, _, v in w["given_class"]]
        transcript = vocab[w["class"]]
        assert said[0] == transcript[0] and said[-1] == transcript[-1]              # anchored: first to last
        assert [transcript.index(t) for t in said] == sorted(transcript.index(t) for t in said)
    assert all(Path(p).stat().st_size > 0 for p in out["plots"])


def read_vocab_transcripts(text_cache):
    """Each transition class's sub-action sentences in order, as the vocabulary names them."""
    from kd.data.hapt import ACTIVITIES
    from kd.text import build_text_bank
    from kd.config import TextConfig
    bank = build_text_bank(TextConfig(cache_dir=text_cache), list(ACTIVITIES[6:]), "hapt", list(ACTIVITIES))
    return {name: [bank.vocab.texts[int(i)] for i in bank.vocab.class_index[c][bank.vocab.class_mask[c]]]
            for c, name in enumerate(ACTIVITIES[6:])}


def test_the_study_pairs_units_by_fold_and_seed_and_tests_their_differences():
    """paired(): differences of the units both variants have (a unit one lacks is left out), their mean and the
    corrected resampled t-test with the study's test/train ratio."""
    from experiments.hapt_subactions import TEST_TRAIN_RATIO, paired
    from kd.stats import corrected_t
    unit = lambda v: {"teacher": {"step_acc_label_free": v}}  # noqa: E731
    units = {"ordered": {"fold0_s0": unit(0.7), "fold1_s0": unit(0.8), "fold2_s0": unit(0.6), "fold3_s0": unit(0.9)},
             "set_only": {"fold0_s0": unit(0.5), "fold1_s0": unit(0.5), "fold2_s0": unit(0.5)}}
    got = paired(units)["ordered - set_only (teacher)"]
    d = np.array([0.2, 0.3, 0.1])
    assert got["n"] == 3 and got["mean"] == pytest.approx(0.2)
    assert got["p"] == pytest.approx(corrected_t(0.2, float(d.std(ddof=1)), 3, TEST_TRAIN_RATIO)["p"])
    assert "ordered - shuffled (teacher)" not in paired(units)                  # no shuffled units
