"""Sub-actions against recorded ground truth: HAPT's transition episodes, held-out subjects, one table.

Trains, for every fold (subject k-fold, validation = the subjects before the fold, as kd.cv) and seed:
- `ordered`: configs/hapt/episodes_subactions.yaml, teacher and signal-only student (stage=all);
- `set_only`: the same teacher with set-only targets (teacher.alignment.target=set);
- `shuffled`, `reversed`: the ordered teacher reading transcripts whose transitions' sub-actions are shuffled
  (one fixed permutation per class, never the identity) or reversed (written to <root>/text/);
then reports, on each fold's test subjects, per-time-step recovery of EPISODE_TRUTH (sitting, standing, lying,
transition; unlabelled samples not scored):
- label-free: the argmax of a model's scores over the whole vocabulary, no class given;
- given the class: the best ordered path through the class's transcript (the teacher's own chain; the student's
  scores through the same chain, kd.recovery.given_class_tokens);
- `ceiling`: a supervised reader of the ordered teacher's own score inputs trained on the training subjects'
  truth (kd.recovery.supervised_ceiling); `majority`: the training subjects' commonest label, everywhere.

    python -m experiments.hapt_subactions --hapt-root PATH                       # train what is missing, report
    python -m experiments.hapt_subactions --hapt-root PATH --report-only --out experiments/results/hapt_subactions.json
    python -m experiments.hapt_subactions --hapt-root PATH --figure RUN_DIR --out experiments/figures/hapt_episodes.png

Finished runs are skipped (kd.cv's rule: results.json and the same fold and seed); the report reads whatever
runs are finished and says how many units each figure has.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import yaml

CONFIG = "configs/hapt/episodes_subactions.yaml"
VARIANTS = {"ordered": ([], "all"), "set_only": (["teacher.alignment.target=set"], "teacher"),
            "shuffled": ([], "teacher"), "reversed": ([], "teacher")}


def reordered_file(src: Path, dst: Path, how: str, classes: List[str], seed: int = 0) -> Path:
    """A copy of description file `src` whose `classes` list their sub-actions reversed or shuffled (a fixed
    permutation per class, never the identity); every other class as it is."""
    from kd.text.descriptions import read_classes
    _, entries = read_classes(src)
    rng = np.random.default_rng(seed)
    out = {}
    for name, e in entries.items():
        subs = list(e["subactions"])
        if name in classes and how == "reversed":
            subs = subs[::-1]
        elif name in classes:
            perm = np.arange(len(subs))
            while (perm == np.arange(len(subs))).all():
                perm = rng.permutation(len(subs))
            subs = [subs[i] for i in perm]
        out[name] = {"label": e["label"], "subactions": subs}
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(yaml.safe_dump({"dataset": "hapt", "classes": out}, sort_keys=False, width=200))
    return dst


def plan(root: Path, hapt_root: str, folds: List[Dict], seeds: List[int], threads: int):
    from kd.cv import Run
    from kd.data.hapt import ACTIVITIES
    from kd.text.descriptions import default_file
    texts = {how: reordered_file(default_file("hapt"), root / "text" / f"hapt_{how}.yaml", how, list(ACTIVITIES[6:]))
             for how in ("shuffled", "reversed")}
    runs = []
    for seed in seeds:
        for name, (extra, stage) in VARIANTS.items():
            if name in texts:
                extra = [f"text.file={texts[name]}"]
            for f, fold in enumerate(folds):
                rdir = root / name / f"fold{f}_s{seed}"
                runs.append(Run(f"{name}/fold{f}_s{seed}", rdir,
                                ["--config", CONFIG, f"data.hapt.root={hapt_root}", *extra,
                                 f"data.test_subjects={fold['test']}", f"data.val_subjects={fold['val']}",
                                 f"run_dir={rdir}", f"seed={seed}", f"stage={stage}",
                                 f"train.num_threads={threads}", "resume=true"], fold, seed))
    return runs


def step_acc(results: Dict, role: str, key: str) -> Optional[float]:
    rec = results.get(role, {}).get(key)
    return None if rec is None else rec["step_acc"]


def unit_figures(run_dir: Path, hapt_root: str, with_ceiling: bool) -> Dict:
    """One finished run's held-out figures (and, for an ordered run, the ceiling and the majority guess)."""
    r = json.loads((run_dir / "results.json").read_text())
    out = {"teacher": {"step_acc_label_free": step_acc(r, "teacher", "subaction_recovery_scores"),
                       "step_acc_given_class": step_acc(r, "teacher", "subaction_recovery_viterbi"),
                       "macro_f1": r["teacher"]["macro_f1"]}}
    if "student" in r:
        out["student"] = {"step_acc_label_free": step_acc(r, "student", "subaction_recovery_scores"),
                          "step_acc_given_class": step_acc(r, "student", "subaction_recovery_given_class"),
                          "macro_f1": r["student"]["macro_f1"]}
    if with_ceiling:
        out.update(reference_figures(run_dir, hapt_root))
    return out


def reference_figures(run_dir: Path, hapt_root: str) -> Dict:
    """The supervised ceiling on the run's teacher's inputs and the training majority guess, computed once and
    kept in the run directory (reference.json)."""
    kept = run_dir / "reference.json"
    if kept.is_file():
        return json.loads(kept.read_text())
    from kd.config import load_config
    from kd.data import build_splits
    from kd.data.hapt import EPISODE_TRUTH
    from kd.recovery import majority_guess, supervised_ceiling
    from kd.stages import load_teacher
    cfg = load_config(run_dir / "config.yaml", [f"data.hapt.root={hapt_root}"])
    splits = build_splits(cfg.data)
    teacher, _ = load_teacher(run_dir / "teacher", splits)
    P = len(EPISODE_TRUTH)
    ref = {"ceiling": supervised_ceiling(teacher, splits, P, seed=cfg.seed)["step_acc"],
           "majority": majority_guess(splits.train, splits.test, P)}
    kept.write_text(json.dumps(ref) + "\n")
    return ref


def episode_figure(run_dir: Path, hapt_root: str, out: Path) -> Dict:
    """One held-out episode per class (the first of each in the test split): the accelerometer, and under it
    the recorded truth, the teacher's decoding given the class, its label-free one, and the exported student's
    label-free one, each step coloured by what it names (sitting, standing, lying, transition)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from matplotlib.colors import ListedColormap
    from kd.config import load_config
    from kd.data import build_splits
    from kd.data.hapt import EPISODE_TRUTH
    from kd.predict import Predictor
    from kd.recovery import hapt_vocab_map, step_predictions, teacher_tokens, teacher_viterbi_tokens
    from kd.stages import load_teacher
    from kd.text.descriptions import default_file
    cfg = load_config(run_dir / "config.yaml", [f"data.hapt.root={hapt_root}"])
    splits = build_splits(cfg.data)
    teacher, meta = load_teacher(run_dir / "teacher", splits)
    student = Predictor(run_dir / "student")
    vmap = hapt_vocab_map(meta["vocab_texts"], default_file("hapt"))
    test = splits.test
    picks = [int(np.flatnonzero(test.labels == c)[0]) for c in range(len(splits.class_names)) if (test.labels == c).any()]
    x, y = test.x[picks], torch.as_tensor(test.labels[picks])
    L = x.shape[-1]
    with torch.no_grad():
        rows = {"truth": test.subaction[picks]}
        for name, fn in (("teacher, given the class", teacher_viterbi_tokens(teacher)),
                         ("teacher, label-free", teacher_tokens(teacher, "sub_scores"))):
            t, l, logits = fn(x, y)
            rows[name] = step_predictions(vmap[logits.argmax(-1)], t.float(), l.float(), L)
        rows["student, label-free"] = vmap[student.timeline(x)["label_free"]]
    cmap = ListedColormap(["#4c72b0", "#55a868", "#8172b2", "#dd8452"])
    fig, axes = plt.subplots(len(picks), 1, figsize=(10, 2.3 * len(picks)), squeeze=False)
    agree = {}
    for i, ax in enumerate(axes[:, 0]):
        for c in range(3):
            ax.plot(np.arange(L), x[i, c].numpy(), lw=0.8, label=f"acc {'xyz'[c]}")
        lo, hi = float(x[i, :3].min()), float(x[i, :3].max())
        span = hi - lo
        strips = np.stack([r[i].numpy() for r in rows.values()]).astype(float)
        strips[strips < 0] = np.nan
        ax.imshow(strips, cmap=cmap, vmin=-0.5, vmax=3.5, aspect="auto", interpolation="nearest",
                  extent=(-0.5, L - 0.5, lo - 0.9 * span, lo - 0.1 * span))
        ax.set_ylim(lo - 0.9 * span, hi + 0.05 * span)
        ax.set_yticks([lo - 0.9 * span + (k + 0.5) * 0.8 * span / len(rows) for k in range(len(rows))][::-1])
        ax.set_yticklabels(list(rows), fontsize=7)
        ax.set_title(f"held-out {splits.class_names[int(y[i])]} (subject {int(test.subjects[picks[i]])})", fontsize=9)
        for name, r in rows.items():
            known = rows["truth"][i] >= 0
            agree.setdefault(name, []).append(float((r[i][known] == rows["truth"][i][known]).float().mean()))
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(k)) for k in range(4)]
    fig.legend(handles, list(EPISODE_TRUTH), loc="upper center", ncol=4, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return {"figure": str(out), "step_agreement_with_truth": {k: [round(v, 3) for v in a] for k, a in agree.items()}}


def mean_sd(values: List[float]) -> Dict:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    return {"mean": float(v.mean()) if len(v) else None, "sd": float(v.std(ddof=1)) if len(v) > 1 else None,
            "n": int(len(v))}


def report(root: Path, hapt_root: str) -> Dict:
    units = {}
    for name in VARIANTS:
        for d in sorted((root / name).glob("fold*_s*")):
            if (d / "results.json").is_file():
                units.setdefault(name, {})[d.name] = unit_figures(d, hapt_root, with_ceiling=name == "ordered")
    ordered = units.get("ordered", {})
    figs = lambda unit_set, role, key: [u[role][key] for u in unit_set.values() if role in u]  # noqa: E731
    methods = {"teacher": ("ordered", "teacher"), "set_only": ("set_only", "teacher"), "student": ("ordered", "student")}
    spread = {"methods": {m: {k: mean_sd(figs(units.get(v, {}), role, k)) for k in
                              ("step_acc_label_free", "step_acc_given_class", "macro_f1")}
                          for m, (v, role) in methods.items()},
              "ceiling": mean_sd([u["ceiling"] for u in ordered.values()]),
              "majority": mean_sd([u["majority"] for u in ordered.values()]),
              **{how: mean_sd(figs(units.get(how, {}), "teacher", "step_acc_label_free")) for how in ("shuffled", "reversed")},
              **{f"{how}_given_class": mean_sd(figs(units.get(how, {}), "teacher", "step_acc_given_class"))
                 for how in ("shuffled", "reversed")}}
    means = {k: ({m: {kk: vv["mean"] for kk, vv in v.items()} for m, v in d.items()} if k == "methods" else d["mean"])
             for k, d in spread.items()}
    return {"data": "HAPT transition episodes (kd.data.hapt task=episodes): 10 s around each postural transition, "
                    "truth per time step in EPISODE_TRUTH (sitting, standing, lying, transition)",
            "units": {name: sorted(u) for name, u in units.items()},
            **means,                     # means over the (fold, seed) units; `spread`: with sd and units
            "spread": spread, "paired": paired(units), "per_unit": units}


# (name, (variant, role), (variant, role)): label-free step recovery, first minus second, over the units both have
PAIRS = [("ordered - set_only (teacher)", ("ordered", "teacher"), ("set_only", "teacher")),
         ("ordered - shuffled (teacher)", ("ordered", "teacher"), ("shuffled", "teacher")),
         ("ordered - reversed (teacher)", ("ordered", "teacher"), ("reversed", "teacher")),
         ("student - teacher", ("ordered", "student"), ("ordered", "teacher"))]
TEST_TRAIN_RATIO = 6 / 21   # subjects: 5 folds of 30, 3 validation subjects, 21 training subjects


def paired(units: Dict) -> Dict:
    """Paired label-free differences with the corrected resampled t-test (kd.stats.corrected_t)."""
    from kd.stats import corrected_t
    out = {}
    for name, (va, ra), (vb, rb) in PAIRS:
        a, b = units.get(va, {}), units.get(vb, {})
        keys = sorted(k for k in a if k in b and ra in a[k] and rb in b[k])
        d = np.array([a[k][ra]["step_acc_label_free"] - b[k][rb]["step_acc_label_free"] for k in keys])
        if len(d) >= 2:
            out[name] = {"mean": float(d.mean()), "sd": float(d.std(ddof=1)), "n": len(d),
                         **corrected_t(float(d.mean()), float(d.std(ddof=1)), len(d), TEST_TRAIN_RATIO)}
    return out


def table(rep: Dict) -> str:
    sp = rep["spread"]
    f = lambda d: "—" if d["mean"] is None else (f"{d['mean']:.3f} ± {d['sd']:.3f}" if d["sd"] is not None  # noqa: E731
                                                else f"{d['mean']:.3f}") + f" ({d['n']})"
    lines = ["| row | label-free step recovery | given the class | macro-F1 (class) |", "|---|---|---|---|"]
    for m, v in sp["methods"].items():
        lines.append(f"| {m} | {f(v['step_acc_label_free'])} | {f(v['step_acc_given_class'])} | {f(v['macro_f1'])} |")
    for how in ("shuffled", "reversed"):
        lines.append(f"| teacher, {how} transcripts | {f(sp[how])} | {f(sp[how + '_given_class'])} | |")
    lines.append(f"| supervised ceiling (same inputs as the teacher's scores) | {f(sp['ceiling'])} | | |")
    lines.append(f"| majority guess (training subjects' commonest label) | {f(sp['majority'])} | | |")
    lines += ["", "| paired, label-free step recovery | mean [95 % CI], corrected p | units |", "|---|---|---|"]
    lines += [f"| {k} | {v['mean']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}], p {v['p']:.3f} | {v['n']} |"
              for k, v in rep.get("paired", {}).items()]
    return "\n".join(lines) + "\n\nmean ± sd over (fold, seed) units, (n) units"


def main(argv: Optional[List[str]] = None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hapt-root", required=True)
    ap.add_argument("--root", default="runs/hapt_subactions")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--out", help="write the report as JSON (with --figure: the PNG)")
    ap.add_argument("--figure", help="a finished ordered run: draw one held-out episode per class to --out")
    args = ap.parse_args(argv)
    if args.figure:
        fig = episode_figure(Path(args.figure), args.hapt_root, Path(args.out or "hapt_episodes.png"))
        print(json.dumps(fig))
        return fig
    from kd.config import load_config
    from kd.cv import data_subjects, execute, make_folds
    root = Path(args.root)
    if not args.report_only:
        cfg = load_config(CONFIG, [f"data.hapt.root={args.hapt_root}"])
        folds = make_folds(data_subjects(cfg), "kfold", args.folds, 3)
        t0 = time.time()
        failures = execute(plan(root, args.hapt_root, folds, args.seeds, threads=1), args.parallel)
        print(f"[hapt_subactions] {time.time() - t0:.0f} s; failures: {failures or 'none'}")
    rep = report(root, args.hapt_root)
    print(table(rep))
    if args.out:
        Path(args.out).write_text(json.dumps({**rep, "table": table(rep)}, indent=2) + "\n")
    return rep


if __name__ == "__main__":
    main()
