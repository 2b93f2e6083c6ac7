"""experiments/pairings_table.py: the one table of every pairing tried against the student alone."""
import json

import pytest

from experiments import pairings_table as pt


def test_every_listed_row_is_paired_against_the_shared_student_alone_runs():
    rows = [pt.row(pt.RESULTS, *spec) for spec in pt.ROWS]
    assert len({(r["study"], r["method"]) for r in rows}) == len(pt.ROWS)          # no row listed twice
    for r in rows:
        lo, hi = r["ci95"]
        assert r["units"] == pt.REFERENCE_UNITS and lo <= r["diff"] <= hi
        # the difference is the method's mean minus the shared reference's
        assert r["macro_f1"] - pt.REFERENCE_MEAN == pytest.approx(r["diff"], abs=pt.TOLERANCE)
    lines = pt.table(rows).splitlines()[3:]
    diffs = [float(line.split("|")[5].split()[0]) for line in lines]
    assert diffs == sorted(diffs, reverse=True) and len(lines) == len(rows)


def _study(tmp_path, reference_mean, units=30):
    cmp = {"n_units": units, "reference_mean": reference_mean, "diff_mean": 0.01, "diff_ci95_corrected": [-0.02, 0.04],
           "p": 0.5, "wins": 16, "losses": 14}
    data = {"code": {"commit": "abc"}, "comparisons": {"m": {"macro_f1": cmp}},
            "methods": {"m": {"macro_f1": {"mean": reference_mean + 0.01, "sd": 0.05}}}}
    (tmp_path / "cv_x.json").write_text(json.dumps(data))


def test_a_row_against_other_reference_runs_is_refused_naming_them(tmp_path):
    _study(tmp_path, 0.8128, units=5)
    with pytest.raises(ValueError, match="5 units of mean 0.8128"):
        pt.row(tmp_path, "cv_x.json", "m", "0x", "a screen")
    _study(tmp_path, pt.REFERENCE_MEAN)
    assert pt.row(tmp_path, "cv_x.json", "m", "0x", "ok")["teacher_macro_f1"] is None
    with pytest.raises(KeyError, match="no comparison for method 'other'"):
        pt.row(tmp_path, "cv_x.json", "other", "0x", "missing")
