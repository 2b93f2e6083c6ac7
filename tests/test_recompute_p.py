"""experiments/recompute_p.py: the corrected test added to a study file from its stored summary alone."""
import json

import pytest

from experiments import recompute_p
from kd.stats import corrected_t


def test_a_study_file_gains_the_corrected_test_and_a_changed_verdict_is_listed(tmp_path):
    folds = [{"test": [1, 2], "val": [10]}, {"test": [3, 4], "val": [2]}, {"test": [5, 6], "val": [4]},
             {"test": [7, 8], "val": [6]}, {"test": [9, 10], "val": [8]}]        # 2 test, 7 training subjects
    called = {"n_units": 30, "diff_mean": 0.022, "diff_sd": 0.05, "diff_ci95": [0.001, 0.044], "p_sign_flip": 0.02}
    quiet = {"n_units": 30, "diff_mean": 0.001, "diff_sd": 0.05, "diff_ci95": [-0.02, 0.02], "p_sign_flip": 0.9}
    rep = {"folds": folds, "headline": "a", "comparisons": {"a": {"macro_f1": called}, "b": {"macro_f1": quiet}},
           "contrasts": {"a - b": {"macro_f1": dict(called)}}}
    path = tmp_path / "cv_x.json"
    path.write_text(json.dumps(rep))
    rows = recompute_p.main([str(path), "--write"])
    t = corrected_t(0.022, 0.05, 30, 2 / 7)
    assert [(r["comparison"], r["verdict_changes"]) for r in rows] == [("a", True), ("(a - b)", True)]
    assert rows[0]["p"] == pytest.approx(t["p"]) and t["p"] > 0.05         # the overlap term undoes the call
    saved = json.loads(path.read_text())
    assert saved["comparisons"]["b"]["macro_f1"]["test_train_ratio"] == pytest.approx(2 / 7)
    assert saved["p"] == pytest.approx(t["p"]) and saved["diff_ci95_corrected"] == pytest.approx([t["low"], t["high"]])
