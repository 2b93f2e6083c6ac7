"""The compare tool on tiny generated runs with known numbers."""
import csv
import json
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

from experiments import compare


def fake_run(root: Path, name: str, acc: float, coef: float) -> Path:
    run = root / name
    (run / "tb" / "student").mkdir(parents=True)
    results = {"student": {"accuracy": acc, "macro_f1": acc - 0.1, "params": 100_000, "train_wall_s": 12.0,
                           "subaction_recovery": {"token_acc": acc / 2, "majority": 0.25, "tokens": 10}},
               "baseline": {"accuracy": 0.5, "macro_f1": 0.4, "params": 90_000, "train_wall_s": 3.0}}
    (run / "results.json").write_text(json.dumps(results))
    w = SummaryWriter(str(run / "tb" / "student"))
    for step in (1, 2, 3):
        w.add_scalar("train/loss_ce", 1.0 / step, step)
        w.add_scalar("train/coef_shape", coef, step)
        w.add_scalar("train/lr", 0.1, step)                       # not a compared curve
    w.close()
    return run


def test_compare_groups_seeds_and_overlays_curves(tmp_path):
    runs = [fake_run(tmp_path, "kd_s0", 0.8, 0.3), fake_run(tmp_path, "kd_s1", 0.6, 0.7),
            fake_run(tmp_path, "base_s0", 0.5, 0.5)]
    out = tmp_path / "out"
    rows = compare.main([*map(str, runs), "--out", str(out), "--group-seeds"])
    by = {(r["run"], r["model"]): r for r in rows}
    assert by[("kd", "student")]["n_runs"] == "2"
    assert by[("kd", "student")]["accuracy"] == "0.700 ± 0.141"          # mean ± sample std
    assert by[("base", "student")]["accuracy"] == "0.500"
    assert by[("kd", "baseline")]["params"] == "0.090 M"
    assert by[("kd", "student")]["recovery"] == "0.350 ± 0.071" and by[("kd", "student")]["recovery_chance"] == "0.250 ± 0.000"
    assert "recovery" not in by[("kd", "baseline")]
    with open(out / "table.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 4
    assert "| kd | student | 2 | 0.700 ± 0.141 |" in (out / "table.md").read_text()
    curves = sorted(p.name for p in (out / "curves").iterdir())
    assert curves == ["train_coef_shape.png", "train_loss_ce.png"]


def test_compare_curve_seed_keeps_one_run_per_configuration(tmp_path):
    runs = [fake_run(tmp_path, "kd_s0", 0.8, 0.3), fake_run(tmp_path, "kd_s1", 0.6, 0.7)]
    out = tmp_path / "out"
    compare.main([*map(str, runs), "--out", str(out), "--group-seeds", "--curve-seed", "1"])
    assert {p.name for p in (out / "curves").iterdir()} == {"train_coef_shape.png", "train_loss_ce.png"}
    assert compare.curve_runs(runs, 1) == [runs[1]] and compare.curve_runs(runs, None) == runs
    assert compare.curve_runs([tmp_path / "kd_s10"], 0) == []
    compare.main([*map(str, runs), "--out", str(tmp_path / "none"), "--curve-seed", "5"])
    assert not list((tmp_path / "none" / "curves").iterdir())


def test_compare_without_results_names_the_run(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty has no results.json"):
        compare.main([str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
