"""Compare runs of distill.py: one table and overlaid curves.

    python -m experiments.compare RUN_DIR [RUN_DIR ...] --out OUT_DIR [--stage student] [--group-seeds]
                                  [--curve-seed 0]

Writes OUT_DIR/table.md and table.csv (held-out accuracy, macro-F1, parameter count and training
wall time of every model in each run's results.json, and on synthetic data the sub-action
recovery with its majority-class chance) and OUT_DIR/curves/<tag>.png: each TensorBoard scalar
of `--stage` (every train/loss_*, train/coef_*, train/dist_* and val/* tag) overlaid across runs.
With --group-seeds, run dirs named NAME_s<seed> are one row: mean ± sample std (n - 1).
For cross-validated, paired comparisons use `python -m kd.cv` (folds, paired CIs, p-values).
--curve-seed N overlays only the runs named *_s<N> (one curve per configuration).
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

ROLES = ("teacher", "student", "baseline")
METRICS = ("accuracy", "macro_f1", "params", "params_inference", "train_wall_s", "recovery", "recovery_chance")
CURVE_PREFIXES = ("train/loss_", "train/coef_", "train/dist_", "val/")


def run_name(run_dir: Path, group_seeds: bool) -> str:
    return re.sub(r"_s\d+$", "", run_dir.name) if group_seeds else run_dir.name


def load_results(run_dir: Path) -> Dict[str, Dict[str, float]]:
    """{role: {metric: value}} from results.json."""
    path = run_dir / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no results.json; is it a finished distill.py run?")
    r = json.loads(path.read_text())
    out = {}
    for role in ROLES:
        if role in r:
            out[role] = {m: r[role][m] for m in METRICS if m in r[role]}
            if "subaction_recovery" in r[role]:
                out[role]["recovery"] = r[role]["subaction_recovery"]["token_acc"]
                out[role]["recovery_chance"] = r[role]["subaction_recovery"]["majority"]
    return out


def curve_runs(runs: List[Path], seed) -> List[Path]:
    """The runs whose curves are overlaid: all, or those named *_s<seed>."""
    return [r for r in runs if seed is None or r.name.endswith(f"_s{seed}")]


def load_curves(run_dir: Path, stage: str) -> Dict[str, List]:
    """{tag: [(step, value), ...]} of one stage's TensorBoard events; {} if the stage did not run."""
    tb = run_dir / "tb" / stage
    if not tb.is_dir():
        return {}
    ea = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    ea.Reload()
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]
            if tag.startswith(CURVE_PREFIXES)}


def fmt(values: List[float], metric: str) -> str:
    if metric in ("params", "params_inference"):
        return f"{statistics.mean(values) / 1e6:.3f} M"
    if metric == "train_wall_s":
        return f"{statistics.mean(values):.0f} s"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(runs: Dict[str, List[Dict]]) -> List[Dict[str, str]]:
    rows = []
    for name, results in runs.items():
        for role in ROLES:
            per_run = [r[role] for r in results if role in r]
            if not per_run:
                continue
            row = {"run": name, "model": role, "n_runs": str(len(per_run))}
            row.update({m: fmt([p[m] for p in per_run], m) for m in METRICS if all(m in p for p in per_run)})
            rows.append(row)
    return rows


def write_table(rows: List[Dict[str, str]], out: Path) -> None:
    cols = ["run", "model", "n_runs", *METRICS]
    with open(out / "table.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r.get(c, "") for c in cols) + " |" for r in rows]
    (out / "table.md").write_text("\n".join(lines) + "\n")


def plot_curves(curves: Dict[str, Dict[str, List]], out: Path) -> List[str]:
    """curves: {run label: {tag: points}} -> one PNG per tag with every run that logged it."""
    tags = sorted({t for c in curves.values() for t in c})
    (out / "curves").mkdir(exist_ok=True)
    written = []
    for tag in tags:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for label, c in curves.items():
            if tag in c:
                steps, values = zip(*c[tag])
                ax.plot(steps, values, label=label, lw=1)
        ax.set_title(tag)
        ax.set_xlabel("optimizer step")
        ax.legend(fontsize=6)
        fig.tight_layout()
        name = tag.replace("/", "_") + ".png"
        fig.savefig(out / "curves" / name, dpi=100)
        plt.close(fig)
        written.append(name)
    return written


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--stage", default="student", help="TensorBoard sub-directory to overlay (teacher|student|baseline)")
    p.add_argument("--group-seeds", action="store_true")
    p.add_argument("--curve-seed", type=int, default=None, help="overlay only runs named *_s<N>")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    grouped: Dict[str, List[Dict]] = defaultdict(list)
    curves = {}
    runs = [Path(r) for r in args.runs]
    for run in runs:
        grouped[run_name(run, args.group_seeds)].append(load_results(run))
    for run in curve_runs(runs, args.curve_seed):
        curves[run.name] = load_curves(run, args.stage)
    rows = table(grouped)
    write_table(rows, out)
    written = plot_curves(curves, out)
    print((out / "table.md").read_text())
    print(f"{len(written)} curve plots in {out / 'curves'}")
    return rows


if __name__ == "__main__":
    main()
