"""The cross-validation tool: folds, study-file checks at load, and a tiny study end to end (teacher
trained once per fold, paired report equal to the runs' own numbers, resumed without re-running)."""
import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from kd import cv
from kd.config import ConfigError
from kd.stats import corrected_t, sign_flip_p
from tests.conftest import TINY

ROOT = cv.ROOT


def test_kfold_folds_cover_every_subject_once_and_validate_on_the_training_side():
    folds = cv.make_folds(range(1, 11), "kfold", 5, 1)
    assert [f["test"] for f in folds] == [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]]
    assert [f["val"] for f in folds] == [[10], [2], [4], [6], [8]]
    uneven = cv.make_folds([3, 1, 7, 5, 9, 2, 4], "kfold", 3, 2)
    assert sorted(s for f in uneven for s in f["test"]) == [1, 2, 3, 4, 5, 7, 9]
    assert {len(f["test"]) for f in uneven} == {2, 3}
    for f in uneven:
        assert not set(f["val"]) & set(f["test"]) and len(f["val"]) == 2
    loso = cv.make_folds([4, 8, 6], "loso", 0, 1)
    assert [f["test"] for f in loso] == [[4], [6], [8]] and [f["val"] for f in loso] == [[8], [4], [6]]
    with pytest.raises(ConfigError, match="leave no training subject"):
        cv.make_folds([1, 2, 3], "loso", 0, 2)


def write_study(tmp_path, body: str):
    path = tmp_path / "study.yaml"
    path.write_text(body)
    return path


STUDY = """
name: tiny
root: {root}
reference: alone
methods:
  kd: {{config: configs/synthetic_smoke.yaml}}
  alone: {{config: configs/synthetic_smoke.yaml, overrides: [teacher.arch=none, teacher.text_guidance=false]}}
folds: 2
seeds: [0, 1]
parallel: 2
n_boot: 2000
overrides: {overrides}
"""


def test_study_mistakes_fail_at_load(tmp_path):
    ok = STUDY.format(root=tmp_path / "r", overrides="[]")
    with pytest.raises(ConfigError, match="reference 'nobody' is not one of its methods"):
        cv.load_study(write_study(tmp_path, ok.replace("reference: alone", "reference: nobody")))
    with pytest.raises(ConfigError, match="unknown config key 'train.epochz'"):       # a method's own config
        cv.load_study(write_study(tmp_path, ok), ["overrides=[train.epochz=3]"])
    with pytest.raises(ConfigError, match=r"sets \['seed=3'\]; the study sets these"):
        cv.load_study(write_study(tmp_path, ok.replace("teacher.arch=none,", "seed=3, teacher.arch=none,")))
    with pytest.raises(ConfigError, match=r"contrast \['kd', 'nobody'\] must name two different methods"):
        cv.load_study(write_study(tmp_path, ok), ["contrasts=[[kd, nobody]]"])
    with pytest.raises(ConfigError, match="lacks"):
        cv.load_study(write_study(tmp_path, ok.replace("name: tiny", "")))
    other_data = ok.replace("kd: {config: configs/synthetic_smoke.yaml}", "kd: {config: configs/synthetic_smoke.yaml, "
                            "extra_teachers: {wrn: {config: configs/wrn16_3_wrn16_1.yaml}}}")
    with pytest.raises(ConfigError, match=r"extra teacher 'wrn' \(configs/wrn16_3_wrn16_1.yaml\) reads other data"):
        cv.load_study(write_study(tmp_path, other_data))                 # watch windows beside synthetic ones
    with pytest.raises(ConfigError, match=r"sets \['kd.extra_teachers=\[\]'\]"):
        cv.load_study(write_study(tmp_path, ok.replace("teacher.arch=none,", "'kd.extra_teachers=[]', teacher.arch=none,")))


def test_a_tiny_study_end_to_end(tmp_path, text_cache):
    root = tmp_path / "study"
    overrides = "[" + ", ".join([*TINY, f"text.cache_dir={text_cache}"]) + "]"
    pairing = tmp_path / "pairing.yaml"                              # the distilled method's pairing file
    pairing.write_text((ROOT / "configs/synthetic_smoke.yaml").read_text())
    # `multi` adds a WRN-16-3 as an extra teacher whose source the SP loss reads, trained once per fold too
    multi = ('  multi: {config: configs/synthetic_smoke.yaml, extra_teachers: {wrn: {config: configs/wrn16_3_wrn16_1.yaml}},'
             ' overrides: ["kd.sources=[{name: shape, tokens: shape_tokens}, {name: action, tokens: action_tokens}, '
             '{name: wrn, tokens: wrn/feature_tokens}]", kd.sp.weight=1.0, kd.sp.source=wrn]}\n')
    text = STUDY.format(root=root, overrides=overrides).replace(
        "kd: {config: configs/synthetic_smoke.yaml}", f"kd: {{config: {pairing}}}")
    path = write_study(tmp_path, text.replace("\nfolds: 2", "\n" + multi + "folds: 2"))
    rep = cv.main([str(path)])
    teachers = sorted(p.relative_to(root / "teachers").as_posix() for p in (root / "teachers").glob("*/fold*")
                      if p.is_dir())
    assert [t.split("_")[0] + t[-6:] for t in teachers] == ["vqshape/fold0", "vqshape/fold1", "wrn16/fold0",
                                                            "wrn16/fold1"]    # one per teacher and fold, shared
    for f in (0, 1):                                                # the extra teacher of the run's own fold
        r = json.loads((root / "multi" / f"fold{f}_s1" / "results.json").read_text())
        assert 0 <= r["extra_teachers"]["wrn"]["macro_f1"] <= 1
        saved = (root / "multi" / f"fold{f}_s1" / "config.yaml").read_text()
        wrn = next(t for t in teachers if t.startswith("wrn16_3") and t.endswith(f"fold{f}"))
        assert f"{root / 'teachers' / wrn / 'teacher'}" in saved
        assert list(OmegaConf.load(root / "teachers" / wrn / "config.yaml").data.test_subjects) == rep["folds"][f]["test"]
    assert rep["folds"] == [{"test": [0, 1, 2], "val": [5]}, {"test": [3, 4, 5], "val": [2]}]   # synthetic ids 0-5
    # the paired difference is computed from the runs' own results.json files
    score = {}
    for method, role in (("kd", "student"), ("alone", "baseline")):
        for f in (0, 1):
            for s in (0, 1):
                r = json.loads((root / method / f"fold{f}_s{s}" / "results.json").read_text())
                assert r["data"]["split"]["test_subjects"] == rep["folds"][f]["test"]
                score[method, f, s] = r[role]["macro_f1"]
                assert set(r[role]["per_subject"]) == {str(x) for x in rep["folds"][f]["test"]}
    diffs = [score["kd", f, s] - score["alone", f, s] for f in (0, 1) for s in (0, 1)]
    c = rep["comparisons"]["kd"]["macro_f1"]
    assert c["diff_mean"] == pytest.approx(np.mean(diffs)) and c["n_units"] == 4
    assert c["p_sign_flip"] == pytest.approx(sign_flip_p(diffs))
    t = corrected_t(np.mean(diffs), np.std(diffs, ddof=1), 4, 3 / 2)     # 3 test, 2 training subjects a fold
    assert c["test_train_ratio"] == pytest.approx(1.5)
    assert c["p"] == pytest.approx(t["p"]) and c["diff_ci95_corrected"] == pytest.approx([t["low"], t["high"]])
    assert c["diff_ci95"][0] <= c["diff_mean"] <= c["diff_ci95"][1]
    from kd.metrics import per_class_f1
    f1 = [per_class_f1(np.array(r["confusion"]), r["class_names"]) for r in
          (json.loads((root / "alone" / f"fold{f}_s{s}" / "results.json").read_text())["baseline"]
           for f in (0, 1) for s in (0, 1))]
    first = next(iter(f1[0]))                                          # the first class
    present = [u[first] for u in f1 if u[first] is not None]
    assert rep["methods"]["alone"]["per_class_f1"][first] == pytest.approx(np.mean(present))
    fold_means = [np.mean([score["alone", f, s] for s in (0, 1)]) for f in (0, 1)]
    assert rep["methods"]["alone"]["macro_f1"]["mean"] == pytest.approx(np.mean(fold_means))
    assert rep["methods"]["alone"]["macro_f1"]["sd"] == pytest.approx(np.std(fold_means, ddof=1))
    assert rep["baseline_macro_f1"] == pytest.approx(rep["methods"]["alone"]["macro_f1"]["mean"])
    assert rep["headline"] == "kd" and rep["paired_units"] == 4
    assert rep["teacher_macro_f1"] is not None
    assert (root / "table.md").is_file() and (root / "paired.png").is_file()
    assert set(rep["code"]) == {"commit", "dirty"}                   # which code the runs executed
    assert set(rep["methods"]["kd"]["teacher"]["health_by_fold"]) == {"0", "1"}
    # resumed: nothing runs again, the report is the same
    stamps = {p: p.stat().st_mtime for p in root.glob("*/fold*/results.json")}
    again = cv.main([str(path)])
    assert {p: p.stat().st_mtime for p in root.glob("*/fold*/results.json")} == stamps
    assert again["comparisons"] == rep["comparisons"]
    # a contrast between two non-reference methods changes no run: paired over the same units
    con = cv.main([str(path), "contrasts=[[multi, kd]]", "--report-only"])["contrasts"]["multi - kd"]["macro_f1"]
    multi = [json.loads((root / "multi" / f"fold{f}_s{s}" / "results.json").read_text())["student"]["macro_f1"]
             for f in (0, 1) for s in (0, 1)]
    assert con["diff_mean"] == pytest.approx(np.mean([m - score["kd", f, s] for m, (f, s) in
                                                      zip(multi, [(0, 0), (0, 1), (1, 0), (1, 1)])]))
    assert "| multi - kd | 4 |" in (root / "table.md").read_text()
    with pytest.raises(ConfigError, match="holds another study"):
        cv.main([str(path), "methods.alone.overrides=[teacher.arch=none,teacher.text_guidance=false,train.lr=0.001]"])
    # the pairing file edited in place after its runs finished: their old numbers are not reported under it
    edited = pairing.read_text().replace("  workspace: {num_slots: 4}\n", "  workspace: {num_slots: 4}\n  logit_kd: {temperature: 2.5}\n")
    assert edited != pairing.read_text()
    pairing.write_text(edited)
    with pytest.raises(ConfigError, match=r"finished with another config .*\['kd.logit_kd.temperature'\]"):
        cv.main([str(path), "--dry-run"])
    pairing.write_text((ROOT / "configs/synthetic_smoke.yaml").read_text())
    more = cv.main([str(path), "seeds=[0, 1, 2]", "--dry-run"])       # more seeds: same study, more runs
    assert more == {}
    # another study may share these teachers only on the same folds: fold 0 of 3 is not fold 0 of 2
    with pytest.raises(ConfigError, match=r"was run with test subjects \[0, 1, 2\].*needs \{'test': \[0, 1\]"):
        cv.main([str(path), f"root={tmp_path / 'other'}", f"teachers_root={root / 'teachers'}", "folds=3"])
