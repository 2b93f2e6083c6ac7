"""Subject-fold cross-validated studies: several pairings on the same folds and seeds, paired.

    python -m kd.cv STUDY.yaml [key=value ...] [--dry-run] [--report-only] [--out FILE]

A study file (e.g. configs/studies/default_vs_baseline.yaml) names the methods (a pairing config
plus overrides each), the reference they are compared to, the folds and the seeds. The tool

1. cuts the data set's subjects into folds: `scheme: kfold` (k consecutive groups of the sorted
   subject ids) or `loso` (one subject per fold). Each fold's validation subject(s) are the
   `val_subjects` subjects just before its test subjects (cyclically), taken from the training side;
   they choose each stage's checkpoint (train.select=best_val) and the test fold is never looked at;
2. trains every distinct teacher once per fold (`stage=teacher`, seed `teacher_seed`) and reuses it
   for every seed and every method that names the same teacher config; a method's `extra_teachers`
   (further knowledge sources, kd.extra_teachers) are trained per fold the same way;
3. runs `distill.py` for every (method, fold, seed), `parallel` at a time with
   train.num_threads = CPUs // parallel each, so the cores are not oversubscribed;
4. is resumable: a run whose results.json exists is never re-run; an interrupted run resumes
   from its last finished epoch (resume=true);
5. writes <root>/cv.json, <root>/table.md and <root>/paired.png: per-fold and per-subject macro-F1
   and accuracy, mean ± sample sd over folds, and for every method against the reference the
   paired difference over (fold, seed) units with the corrected resampled t-test's 95 % CI and p
   (the claim's test: they agree), beside a two-stage cluster-bootstrap CI and an exact sign-flip p
   (diagnostics; kd/stats.py says why the sign-flip p is too small).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from kd.config import ConfigError, config_from_dict, load_config
from kd.identity import IGNORED_FOR_RERUN, TEACHING_KEYS, comparable, config_diffs
from kd.contract import teacher_outputs
from kd.metrics import per_class_f1
from kd.stats import EXACT_SIGN_FLIP_MAX_UNITS, cluster_bootstrap_ci, corrected_t, sign_flip_p, summary

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("macro_f1", "accuracy")
HEALTH_KEYS = ("distinct_shapes", "codes_used", "span_coverage", "span_t_std", "shape_fit_r2", "recon_r2", "token_spread",
               "collapsed")
# A finished run counts for a study when its saved config equals the one the study makes now, up to
# what distill.py lets change in a run_dir and where the runs and their teachers live.
SAME_RUN_IGNORES = (*IGNORED_FOR_RERUN, "run_dir", "teacher.checkpoint")

# Keys a run's teacher does not depend on: two methods whose configs differ only here share one teacher.
NOT_TEACHER_KEYS = ("run_dir", "seed", "stage", "resume", "overwrite", "student", "kd", "train.epochs", "train.lr",
                    "train.baseline", "train.num_threads", "train.mixup", "train.cache_teacher", "train.augment",
                    "train.ema")


@dataclass
class TeacherSpec:
    config: str = MISSING                                    # a pairing YAML whose teacher section is used
    overrides: List[str] = field(default_factory=list)


@dataclass
class MethodSpec:
    config: str = MISSING                                    # a pairing YAML, e.g. configs/default.yaml
    overrides: List[str] = field(default_factory=list)      # key=value, as on distill.py's command line
    # Further teachers (kd.extra_teachers), each trained once per fold like the main teacher (from its
    # own pairing file's teacher section) and shared with every method naming the same teacher config.
    extra_teachers: Dict[str, TeacherSpec] = field(default_factory=dict)


@dataclass
class StudySpec:
    name: str = MISSING
    root: Optional[str] = None           # None: runs/cv/<name>
    # Where fold teachers live (None: <root>/teachers). Two studies with the same folds may share them:
    # a teacher is keyed by a hash of its config and checked against the fold's subjects before reuse.
    teachers_root: Optional[str] = None
    methods: Dict[str, MethodSpec] = field(default_factory=dict)
    reference: str = MISSING             # the method every other one is compared to (e.g. the student alone)
    headline: Optional[str] = None       # the method whose numbers go to the flat summary keys (None: first other)
    scheme: str = "kfold"                # kfold | loso
    folds: int = 5                       # k for kfold
    val_subjects: int = 1                # validation subjects per fold, from the training side
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2, 3, 4, 5])
    teacher_seed: int = 0                # every fold's teacher is trained once, with this seed
    parallel: Optional[int] = None       # runs at a time; None: the CPUs this process may use
    overrides: List[str] = field(default_factory=list)      # applied to every method (before its own)
    n_boot: int = 10_000
    # Further paired comparisons, each [method, reference] (e.g. [ensemble_mixup, alone_mixup]): reported
    # beside the comparisons against `reference`; they change no run.
    contrasts: List[List[str]] = field(default_factory=list)


# ----------------------------------------------------------------------------- study file
def load_study(path: str | Path, overrides: Sequence[str] = ()) -> StudySpec:
    """Schema <- study YAML <- key=value overrides; every method's config is loaded (and so checked) now."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file {str(path)!r} does not exist")
    try:
        spec = OmegaConf.merge(OmegaConf.structured(StudySpec), OmegaConf.load(path),
                               OmegaConf.from_dotlist(list(overrides)))
        OmegaConf.to_container(spec, throw_on_missing=True)
    except (ConfigKeyError, ConfigAttributeError, ValidationError) as err:
        raise ConfigError(f"study {str(path)!r}: {str(err).splitlines()[0]} (see StudySpec in kd/cv.py)") from None
    except Exception as err:  # omegaconf's MissingMandatoryValue
        if type(err).__name__ != "MissingMandatoryValue":
            raise
        raise ConfigError(f"study {str(path)!r} lacks {getattr(err, 'full_key', err)!r}") from None
    if spec.root is None:
        spec.root = f"runs/cv/{spec.name}"
    if spec.teachers_root is None:
        spec.teachers_root = str(Path(spec.root) / "teachers")
    check_study(spec)
    return spec


def check_study(spec) -> None:
    if len(spec.methods) < 2:
        raise ConfigError(f"study {spec.name!r} needs at least two methods to compare, got {list(spec.methods)}")
    if spec.reference not in spec.methods:
        raise ConfigError(f"study reference {spec.reference!r} is not one of its methods {list(spec.methods)}")
    if spec.headline is not None and (spec.headline not in spec.methods or spec.headline == spec.reference):
        raise ConfigError(f"study headline {spec.headline!r} must be a method other than the reference")
    if spec.scheme not in ("kfold", "loso"):
        raise ConfigError(f"study scheme={spec.scheme!r} is not one of ['kfold', 'loso']")
    if spec.scheme == "kfold" and spec.folds < 2:
        raise ConfigError(f"study folds={spec.folds} must be >= 2 (or scheme: loso)")
    if spec.val_subjects < 1:
        raise ConfigError("study val_subjects must be >= 1: validation selects every stage's checkpoint")
    if not spec.seeds or len(set(spec.seeds)) != len(spec.seeds):
        raise ConfigError(f"study seeds must be distinct and non-empty, got {list(spec.seeds)}")
    for pair in spec.contrasts:
        if len(pair) != 2 or pair[0] == pair[1] or any(m not in spec.methods for m in pair):
            raise ConfigError(f"study contrast {list(pair)} must name two different methods of {list(spec.methods)} "
                              f"as [method, reference]")
    if spec.parallel is not None and spec.parallel < 1:
        raise ConfigError(f"study parallel={spec.parallel} must be >= 1")
    for name, m in spec.methods.items():
        if "/" in name or not name:
            raise ConfigError(f"method name {name!r} must be non-empty and without '/'")
        bad = [o for o in m.overrides if o.split("=", 1)[0] in ("run_dir", "seed", "stage", "data.test_subjects",
                                                              "data.val_subjects", "teacher.checkpoint",
                                                              "kd.extra_teachers")]
        if bad:
            raise ConfigError(f"method {name!r} sets {bad}; the study sets these per fold and seed")
        cfg = method_config(spec, name)                # a bad key or value fails here, before any run
        for t_name, t in m.extra_teachers.items():     # an extra teacher learns from the same windows
            diff = [k for k, _, _ in config_diffs(comparable(teacher_config(spec, t).data, ()), comparable(cfg.data, ()))]
            if diff:
                raise ConfigError(f"method {name!r}: extra teacher {t_name!r} ({t.config}) reads other data than the "
                                  f"method (data.{diff[0]}); give it the same data settings")


def method_config(spec, name: str, extra: Sequence[str] = (), fold: int = 0):
    """A method's run config; its extra teachers are the ones of `fold` (their outputs known from their
    configs, so the pairing is checked before they are trained)."""
    m = spec.methods[name]
    outputs = {n: teacher_outputs(teacher_config(spec, t).teacher) for n, t in m.extra_teachers.items()}
    return load_config(resolve(m.config), [*spec.overrides, *m.overrides, *extra_teacher_args(spec, name, fold),
                                           *extra], extra_outputs=outputs)


def resolve(config: str) -> Path:
    return ROOT / config if not Path(config).is_absolute() else Path(config)


def teacher_config(spec, t: TeacherSpec):
    """The config a (extra) teacher is trained with: its pairing file under the study's overrides."""
    return load_config(resolve(t.config), [*spec.overrides, *t.overrides, "stage=teacher"])


def teacher_dir_of(spec, cfg, f: int) -> Path:
    return Path(spec.teachers_root) / f"{cfg.teacher.arch}_{teacher_key(cfg)}" / f"fold{f}"


def extra_teacher_args(spec, name: str, f: int) -> List[str]:
    """kd.extra_teachers of a method's fold-`f` run: each extra teacher's checkpoint of that fold."""
    ex = spec.methods[name].extra_teachers
    items = [f"{{name: {n}, checkpoint: {teacher_dir_of(spec, teacher_config(spec, t), f) / 'teacher'}}}"
             for n, t in ex.items()]
    return [f"kd.extra_teachers=[{', '.join(items)}]"] if items else []


# ----------------------------------------------------------------------------- folds
def make_folds(subjects: Sequence[int], scheme: str, k: int, n_val: int) -> List[Dict[str, List[int]]]:
    """[{"test": [...], "val": [...]}] per fold. kfold: k consecutive groups of the sorted ids (sizes
    differ by at most one); loso: one subject each. Validation: the n_val subjects just before the
    fold's first test subject, cyclically over the sorted ids."""
    ids = sorted(int(s) for s in subjects)
    if scheme == "loso":
        k = len(ids)
    if k > len(ids):
        raise ConfigError(f"{k} folds need at least {k} subjects; the data have {len(ids)}: {ids}")
    if len(ids) - len(ids) // k - (len(ids) % k > 0) - n_val < 1:
        raise ConfigError(f"{len(ids)} subjects leave no training subject with {k} folds and {n_val} validation "
                          f"subject(s); use fewer folds or validation subjects")
    bounds = np.linspace(0, len(ids), k + 1).round().astype(int)
    folds = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        val = [ids[(a - 1 - i) % len(ids)] for i in range(n_val)]
        folds.append({"test": ids[a:b], "val": sorted(val)})
    return folds


def data_subjects(cfg) -> List[int]:
    from kd.data import build_splits
    info = build_splits(cfg.data).info()["subjects"]
    if any(v is None for v in info.values()):
        raise ConfigError("the data have no subject ids (an npz without `subject`): subject folds need them")
    return sorted({s for v in info.values() for s in v})


# ----------------------------------------------------------------------------- plan
@dataclass
class Run:
    name: str                     # teachers/<key>/fold<k> or <method>/fold<k>_s<seed>
    run_dir: Path
    args: List[str]
    fold: Dict[str, List[int]]    # the fold's test and validation subjects
    seed: int
    needs: List[str] = field(default_factory=list)   # the teacher runs this one reads
    config: Optional[Dict] = None  # the config a finished run must have (SAME_RUN_IGNORES left out)


def same_run_view(cfg) -> Dict:
    """What a finished run must share with the run the study makes now: where its teachers were stored is
    not part of it (which teachers they are is their key: teacher_key)."""
    d = comparable(cfg, SAME_RUN_IGNORES)
    for t in (d.get("kd") or {}).get("extra_teachers") or []:
        t.pop("checkpoint", None)
    return d


def teacher_key(cfg) -> Optional[str]:
    """A short hash of everything a run's teacher depends on (None: no teacher)."""
    if cfg.teacher.arch == "none":
        return None
    d = comparable(cfg, (*NOT_TEACHER_KEYS, "teacher.checkpoint", *(f"teacher.{k}" for k in TEACHING_KEYS)))
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]


def plan(spec, folds: List[Dict], threads: int) -> List[Run]:
    root = Path(spec.root)
    common = [f"train.num_threads={threads}", "resume=true"]
    teachers, runs = {}, []

    def teacher_run(config: str, overrides: List[str], cfg, f: int, split: List[str]) -> str:
        """The fold-`f` run of the teacher `cfg` describes (one per distinct teacher config and fold)."""
        tdir = teacher_dir_of(spec, cfg, f)
        tname = f"teachers/{tdir.parent.name}/{tdir.name}"
        if tname not in teachers:
            # a teacher's directory is named by the hash of its config: no config check needed
            teachers[tname] = Run(tname, tdir, ["--config", config, *spec.overrides, *overrides, *split,
                                                f"run_dir={tdir}", f"seed={spec.teacher_seed}", "stage=teacher",
                                                *common], folds[f], spec.teacher_seed)
        return tname

    for name, m in spec.methods.items():
        cfg = method_config(spec, name)
        for f, fold in enumerate(folds):
            split = [f"data.test_subjects={fold['test']}", f"data.val_subjects={fold['val']}"]
            main = teacher_run(str(m.config), list(m.overrides), cfg, f, split) if cfg.teacher.arch != "none" else None
            needs = ([main] if main else []) + [teacher_run(str(t.config), list(t.overrides), teacher_config(spec, t),
                                                            f, split) for t in m.extra_teachers.values()]
            for seed in spec.seeds:
                rname = f"{name}/fold{f}_s{seed}"
                rdir = root / rname
                own = [*split, f"run_dir={rdir}", f"seed={seed}", *common]
                if main:
                    own += [f"teacher.checkpoint={teachers[main].run_dir / 'teacher'}", "stage=student",
                            "train.baseline=false"]
                config = same_run_view(method_config(spec, name, own, f))
                runs.append(Run(rname, rdir, ["--config", str(m.config), *spec.overrides, *m.overrides,
                                              *extra_teacher_args(spec, name, f), *own], fold, seed, needs, config))
    # seeds outermost: an interrupted study has whole paired seeds done first
    runs.sort(key=lambda r: (int(r.name.rsplit("_s", 1)[1]), r.name.split("/")[1], r.name))
    return list(teachers.values()) + runs


def done(run: Run) -> bool:
    """Finished: its results.json exists, its saved config is this fold and seed (a reused teacher
    directory trained on other subjects would leak test subjects into training), and, for a student
    or baseline run, the config is the one the study makes now (a pairing file edited since would
    otherwise be reported under its new name with its old numbers)."""
    if not (run.run_dir / "results.json").is_file():
        return False
    saved = OmegaConf.load(run.run_dir / "config.yaml")
    found = {"test": list(saved.data.test_subjects or []), "val": list(saved.data.val_subjects or []),
             "seed": saved.seed}
    if found != {**run.fold, "seed": run.seed}:
        raise ConfigError(f"{run.run_dir} was run with test subjects {found['test']}, validation {found['val']}, "
                          f"seed {found['seed']}, but this study needs {run.fold}, seed {run.seed}; use another "
                          f"root or teachers_root")
    if run.config is not None:
        # through today's schema: a key added since the run takes its default (its old behaviour)
        diff = [k for k, _, _ in config_diffs(same_run_view(config_from_dict(OmegaConf.to_container(saved))),
                                              run.config)]
        if diff:
            raise ConfigError(f"{run.run_dir} finished with another config than this study now makes (differs at "
                              f"{diff[:8]}): its pairing file or overrides changed since; use another root "
                              f"(root=...) or delete that run")
    return True


def execute(runs: List[Run], parallel: int, log=print) -> List[Tuple[str, str]]:
    """Run every unfinished run, `parallel` at a time, each after the teacher it needs; returns the
    failures as (run name, log path). A run whose teacher failed is not started."""
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    futures: Dict[str, Future] = {}
    failures: List[Tuple[str, str]] = []

    def one(run: Run) -> bool:
        failed = [n for n in run.needs if not futures[n].result()]
        if failed:
            failures.append((run.name, f"teacher {failed[0]} failed"))
            return False
        if done(run):
            log(f"[skip] {run.name} (finished)")
            return True
        logf = run.run_dir.with_suffix(".log")
        logf.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        with open(logf, "a") as fh:
            code = subprocess.run([sys.executable, "distill.py", *run.args], cwd=ROOT, env=env, stdout=fh,
                                  stderr=subprocess.STDOUT).returncode
        ok = code == 0 and done(run)
        log(f"[{'done' if ok else 'FAILED'}] {run.name}  {time.time() - t0:.0f} s" + ("" if ok else f"  (see {logf})"))
        if not ok:
            failures.append((run.name, str(logf)))
        return ok

    # Teachers come first in `runs`, so a run waiting on its teacher never blocks a teacher from starting.
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for run in runs:
            futures[run.name] = pool.submit(one, run)
        for f in futures.values():
            f.result()
    return failures


# ----------------------------------------------------------------------------- report
def method_scores(results: Dict) -> Dict:
    """The method's own model: the distilled student, or the no-teacher baseline of a baseline config."""
    return results["student"] if "student" in results else results["baseline"]


def collect(spec, folds, runs: List[Run]) -> Dict:
    """{method: {(fold, seed): scores}} of the finished runs. A distilled run's results.json also holds
    its teacher evaluated on the same test fold (`teacher`), which is where the teacher's scores and
    health are read from: the run itself says which teacher it used."""
    out: Dict = {m: {} for m in spec.methods}
    for run in runs:
        if run.name.startswith("teachers/") or not done(run):
            continue
        r = json.loads((run.run_dir / "results.json").read_text())
        method, rest = run.name.split("/")
        fold, seed = rest[4:].split("_s")
        scores = method_scores(r)
        out[method][(int(fold), int(seed))] = {
            **{m: scores[m] for m in METRICS}, "per_subject": scores.get("per_subject", {}), "teacher": r.get("teacher"),
            "per_class_f1": per_class_f1(np.array(scores["confusion"]), scores["class_names"])}
    return out


def class_f1_means(units: Dict[Tuple[int, int], Dict]) -> Dict[str, Optional[float]]:
    """Each class's F1 averaged over the units where it occurs (rare classes: are they helped?)."""
    names = next(iter(units.values()))["per_class_f1"]
    vals = {c: [u["per_class_f1"][c] for u in units.values() if u["per_class_f1"][c] is not None] for c in names}
    return {c: float(np.mean(v)) if v else None for c, v in vals.items()}


def fold_means(units: Dict[Tuple[int, int], Dict], metric: str) -> Dict[int, float]:
    by: Dict[int, List[float]] = {}
    for (fold, _), s in units.items():
        by.setdefault(fold, []).append(s[metric])
    return {f: float(np.mean(v)) for f, v in sorted(by.items())}


def per_subject(units: Dict[Tuple[int, int], Dict], metric: str) -> Dict[str, float]:
    by: Dict[str, List[float]] = {}
    for s in units.values():
        for subj, m in s["per_subject"].items():
            by.setdefault(subj, []).append(m[metric])
    return {k: float(np.mean(v)) for k, v in sorted(by.items(), key=lambda kv: int(kv[0]))}


def test_train_ratio(folds: List[Dict]) -> float:
    """Test over training subjects of a fold, averaged over folds: the overlap term of the corrected t-test
    (a fold's training subjects are every subject in neither its test nor its validation split)."""
    subjects = {s for f in folds for s in f["test"]} | {s for f in folds for s in f["val"]}
    return float(np.mean([len(f["test"]) / (len(subjects) - len(f["test"]) - len(f["val"])) for f in folds]))


def compare_paired(units: Dict, ref: Dict, metric: str, n_boot: int, ratio: float) -> Optional[Dict]:
    """Paired difference method - reference over the (fold, seed) units both have. The claim's p and CI are
    the corrected t-test's (`p`, `diff_ci95_corrected`; kd/stats.py says why); the cluster bootstrap CI and
    the sign-flip p (which counts every unit as independent, so it is too small) stay as diagnostics."""
    keys = sorted(set(units) & set(ref))
    if not keys:
        return None
    diffs = {k: units[k][metric] - ref[k][metric] for k in keys}
    by_fold: Dict[int, List[float]] = {}
    for (fold, _), d in diffs.items():
        by_fold.setdefault(fold, []).append(d)
    d = np.array(list(diffs.values()))
    if len(d) <= EXACT_SIGN_FLIP_MAX_UNITS:
        p, p_units = sign_flip_p(d), "fold x seed"
    else:
        p, p_units = sign_flip_p([np.mean(v) for v in by_fold.values()]), "fold (seed mean)"
    ci = cluster_bootstrap_ci(by_fold, n_boot=n_boot)
    t = corrected_t(float(d.mean()), summary(d)["sd"], len(d), ratio) if len(d) > 1 else None
    return {"n_units": len(keys), "method_mean": float(np.mean([units[k][metric] for k in keys])),
            "reference_mean": float(np.mean([ref[k][metric] for k in keys])),
            "diff_mean": float(d.mean()), "diff_sd": summary(d)["sd"],
            "p": t["p"] if t else None, "diff_ci95_corrected": [t["low"], t["high"]] if t else None,
            "test_train_ratio": ratio,
            "diff_ci95": [ci["low"], ci["high"]], "p_sign_flip": p, "p_units": p_units,
            "wins": int((d > 0).sum()), "losses": int((d < 0).sum()),
            "diff_by_fold": {str(f): float(np.mean(v)) for f, v in sorted(by_fold.items())}}


def code_version() -> Dict:
    """The commit the study's runs execute (and whether the tree had uncommitted changes): a study
    that spans code changes measures a moving target, so run it from a clean checkout or worktree."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain", "--", "*.py"))}


def report(spec, folds: List[Dict], runs: List[Run]) -> Dict:
    got = collect(spec, folds, runs)
    ref = got[spec.reference]
    code_file = Path(spec.root) / "code.json"         # written when the runs were started
    code = json.loads(code_file.read_text()) if code_file.is_file() else {"commit": None, "dirty": None}
    ratio = test_train_ratio(folds)
    out = {"study": spec.name, "code": code, "scheme": spec.scheme, "folds": folds, "seeds": list(spec.seeds),
           "reference": spec.reference, "methods": {}, "comparisons": {}}
    for name, units in got.items():
        if not units:
            out["methods"][name] = {"runs_done": 0}
            continue
        entry = {"runs_done": len(units), "config": spec.methods[name].config,
                 "overrides": [*spec.overrides, *spec.methods[name].overrides]}
        for metric in METRICS:
            fm = fold_means(units, metric)
            entry[metric] = {**summary(list(fm.values())), "by_fold": {str(k): v for k, v in fm.items()},
                             "unit_sd": summary([u[metric] for u in units.values()])["sd"],
                             "per_subject": per_subject(units, metric)}
        entry["per_class_f1"] = class_f1_means(units)
        teacher = {f: u["teacher"] for (f, _), u in sorted(units.items()) if u["teacher"]}   # one per fold
        if teacher:
            entry["teacher"] = {m: summary([t[m] for t in teacher.values()]) for m in METRICS}
            entry["teacher"]["per_class_f1"] = class_f1_means(
                {f: {"per_class_f1": per_class_f1(np.array(t["confusion"]), t["class_names"])} for f, t in teacher.items()})
            entry["teacher"]["by_fold"] = {str(f): t["macro_f1"] for f, t in teacher.items()}
            health = {str(f): t["health"] for f, t in teacher.items() if "health" in t}
            if health:      # the VQShape teacher's health per fold (teachers/health.py)
                entry["teacher"]["health_by_fold"] = {f: {k: h[k] for k in HEALTH_KEYS if k in h}
                                                    for f, h in health.items()}
        out["methods"][name] = entry
        if name != spec.reference:
            out["comparisons"][name] = {m: compare_paired(units, ref, m, spec.n_boot, ratio) for m in METRICS}
    out["contrasts"] = {f"{a} - {b}": {m: compare_paired(got[a], got[b], m, spec.n_boot, ratio) for m in METRICS}
                        for a, b in spec.contrasts if got[a] and got[b]}
    head = spec.headline or next(m for m in spec.methods if m != spec.reference)
    h, c = out["methods"][head], out["comparisons"].get(head, {}).get("macro_f1")
    if c is not None:       # the flat keys a reader (and the README) quotes: means over the paired units only
        paired_folds = {int(f) for f in c["diff_by_fold"]}
        teacher = h.get("teacher", {}).get("by_fold", {})
        out.update({"headline": head, "paired_units": c["n_units"], "student_macro_f1": c["method_mean"],
                    "baseline_macro_f1": c["reference_mean"],
                    "teacher_macro_f1": float(np.mean([v for f, v in teacher.items() if int(f) in paired_folds]))
                    if teacher else None,
                    "diff_mean": c["diff_mean"], "diff_ci95": c["diff_ci95"], "p": c["p"],
                    "diff_ci95_corrected": c["diff_ci95_corrected"], "p_sign_flip": c["p_sign_flip"]})
    return out


def table_md(rep: Dict) -> str:
    lines = [f"Study `{rep['study']}`: {len(rep['folds'])} folds ({rep['scheme']}) x seeds {rep['seeds']} planned "
             f"(`runs`: the (fold, seed) runs finished); "
             f"macro-F1 on held-out subjects, mean ± sample sd over fold means; paired difference against "
             f"`{rep['reference']}` over (fold, seed) units with the corrected resampled t-test's 95 % CI and p "
             f"(Nadeau & Bengio 2003; kd/stats.py).", "",
             "| method | runs | macro-F1 | accuracy | teacher macro-F1 | Δ macro-F1 vs reference [95 % CI] | p | wins/losses |",
             "|---|---|---|---|---|---|---|---|"]
    for name, e in rep["methods"].items():
        if not e.get("runs_done"):
            lines.append(f"| {name} | 0 | | | | | | |")
            continue
        f1, acc = e["macro_f1"], e["accuracy"]
        t = e.get("teacher", {}).get("macro_f1")
        c = rep["comparisons"].get(name, {}).get("macro_f1") if name in rep["comparisons"] else None
        cmp = f"{ci_text(c)} | {c['wins']}/{c['losses']}" if c else "reference | | "
        teacher = f"{t['mean']:.3f} ± {t['sd']:.3f}" if t else "–"
        lines.append(f"| {name} | {e['runs_done']} | {f1['mean']:.3f} ± {f1['sd']:.3f} | {acc['mean']:.3f} ± "
                     f"{acc['sd']:.3f} | {teacher} | {cmp} |")
    if rep.get("contrasts"):
        lines += ["", "| contrast | units | Δ macro-F1 [95 % CI] | p | wins/losses |", "|---|---|---|---|---|"]
        for name, c in rep["contrasts"].items():
            c = c["macro_f1"]
            lines.append(f"| {name} | {c['n_units']} | {ci_text(c)} | {c['wins']}/{c['losses']} |")
    return "\n".join(lines) + "\n"


def ci_text(c: Dict) -> str:
    """`diff [low, high] | p` of a comparison, with the corrected test's CI and p (one unit: no test)."""
    if c["p"] is None:
        return f"{c['diff_mean']:+.3f} | "
    low, high = c["diff_ci95_corrected"]
    return f"{c['diff_mean']:+.3f} [{low:+.3f}, {high:+.3f}] | {c['p']:.3f}"


def plot_paired(rep: Dict, path: Path) -> None:
    """One panel per comparison: each fold's seed-mean macro-F1, reference -> method, one line per fold."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [n for n in rep["comparisons"] if rep["comparisons"][n]["macro_f1"]]
    if not names:
        return
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.6), squeeze=False)
    ref = rep["methods"][rep["reference"]]["macro_f1"]["by_fold"]
    for ax, name in zip(axes[0], names):
        mine = rep["methods"][name]["macro_f1"]["by_fold"]
        for fold in sorted(set(ref) & set(mine), key=int):
            up = mine[fold] >= ref[fold]
            ax.plot([0, 1], [ref[fold], mine[fold]], "-o", color="tab:green" if up else "tab:red", lw=1)
            ax.annotate(f"f{fold}", (1.03, mine[fold]), fontsize=7, va="center")
        c = rep["comparisons"][name]["macro_f1"]
        ax.set_xticks([0, 1], [rep["reference"], name], fontsize=8)
        ax.set_xlim(-0.2, 1.3)
        lo, hi = c.get("diff_ci95_corrected") or c["diff_ci95"]       # the table's CI (one unit: the bootstrap's)
        ax.set_title(f"Δ {c['diff_mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]", fontsize=8)
    axes[0][0].set_ylabel("macro-F1 (fold mean over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- entry point
def check_study_file(spec, root: Path) -> None:
    """A different study in the same root is refused. The seeds and `parallel` may change: runs are
    kept per seed, so more seeds add runs to the same study."""
    saved = root / "study.yaml"
    if not saved.is_file():
        return
    old = OmegaConf.to_container(OmegaConf.load(saved))
    new = OmegaConf.to_container(OmegaConf.create(OmegaConf.to_yaml(spec)))
    for key in ("parallel", "seeds", "teachers_root", "root", "contrasts"):   # root: where this file is
        old.pop(key, None)
        new.pop(key, None)
    if old != new:
        raise ConfigError(f"{saved} holds another study; choose another root (root=...) or delete it")


def write_study_file(spec, root: Path) -> None:
    """The resolved study next to its runs."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "study.yaml").write_text(OmegaConf.to_yaml(spec))


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study")
    ap.add_argument("overrides", nargs="*", help="study keys as key=value, e.g. seeds=[0,1] parallel=2")
    ap.add_argument("--dry-run", action="store_true", help="print the folds and the runs still to do")
    ap.add_argument("--report-only", action="store_true", help="summarise the finished runs, start none")
    ap.add_argument("--out", default=None, help="also copy cv.json to this file")
    args = ap.parse_args(argv)
    spec = load_study(args.study, args.overrides)
    root = Path(spec.root)
    cpus = len(os.sched_getaffinity(0))
    parallel = spec.parallel or cpus
    threads = max(1, cpus // parallel)
    folds = make_folds(data_subjects(method_config(spec, spec.reference)), spec.scheme, spec.folds,
                       spec.val_subjects)
    check_study_file(spec, root)
    runs = plan(spec, folds, threads)
    todo = [r for r in runs if not done(r)]
    print(f"[cv] {spec.name}: {len(folds)} folds, seeds {list(spec.seeds)}, {len(runs)} runs "
          f"({len(todo)} to do), {parallel} at a time x {threads} thread(s); root {root}")
    for f, fold in enumerate(folds):
        print(f"[cv] fold {f}: test subjects {fold['test']}, validation {fold['val']}")
    if args.dry_run:
        for r in todo:
            print("python distill.py " + " ".join(repr(a) if " " in a else a for a in r.args))
        return {}
    failures = []
    if not args.report_only:
        code = code_version()
        if code["dirty"]:
            print("[cv] WARNING: the code has uncommitted changes; runs started later will see any further edits. "
                  "Run studies from a clean checkout (e.g. git worktree add ../study HEAD).")
        write_study_file(spec, root)
        (root / "code.json").write_text(json.dumps(code))
        t0 = time.time()
        failures = execute(runs, parallel)
        print(f"[cv] runs finished in {time.time() - t0:.0f} s")
    rep = report(spec, folds, runs)
    rep["failures"] = [{"run": n, "log": lf} for n, lf in failures]
    root.mkdir(parents=True, exist_ok=True)
    (root / "cv.json").write_text(json.dumps(rep, indent=2))
    (root / "table.md").write_text(table_md(rep))
    plot_paired(rep, root / "paired.png")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / "cv.json", args.out)
    print(table_md(rep))
    if failures:
        print(f"[cv] {len(failures)} run(s) FAILED: " + "; ".join(f"{n} ({lf})" for n, lf in failures))
        raise SystemExit(1)
    return rep


if __name__ == "__main__":
    main()
