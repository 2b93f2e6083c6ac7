"""Every pairing tried against the student trained alone, in one table, read from the studies' result files.

Each cross-validation study (`python -m kd.cv`) wrote its own `experiments/results/cv_<study>.json`, with its
methods' paired differences against its reference. The 30-unit studies since December 2026 share the same
reference runs (WRN-16-1 alone on the same 5 subject folds, seeds 0-5, linked from one study into the next),
so their rows are directly comparable; this collects them. Nothing is retrained or recomputed: every number is
the study file's. A row whose study reference is not those runs (its mean differs) is refused, not mixed in.

    python -m experiments.pairings_table [--out experiments/results/pairings_all.json]

Prints a Markdown table (RESULTS.md, "Every pairing tried") sorted by the difference against the student alone.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Optional

RESULTS = Path(__file__).resolve().parent / "results"

# The shared reference: WRN-16-1 alone, 5 folds x seeds 0-5 (RESULTS.md section 0d on); every row must match it.
REFERENCE_MEAN, REFERENCE_UNITS, TOLERANCE = 0.8433, 30, 5e-5

# (study file, method, RESULTS.md section, what the pairing is). One row per distinct set of runs: a method
# linked into several studies is listed once, from the study that made it.
ROWS = (
    ("cv_ensemble.json", "ensemble", "0d", "ensemble of 4 WRN-16-1 → WRN-16-1, logit KD"),
    ("cv_ensemble_mixup.json", "ensemble_mixup", "0d", "ensemble, function matching (mixup, teacher live)"),
    ("cv_ensemble_mixup.json", "alone_mixup", "0d", "student alone, mixup (no teacher)"),
    ("cv_ensemble_augment.json", "alone_augment", "0d", "student alone, mixup + gain, noise, shift (no teacher)"),
    ("cv_ensemble_augment.json", "ensemble_augment", "0d", "ensemble, function matching + gain, noise, shift"),
    ("cv_text_plus_ensemble.json", "default", "0e", "text-guided VQShape (flat head, class keys), full KD set"),
    ("cv_text_plus_ensemble.json", "text_plus_ensemble", "0e", "text-guided (flat head, class keys) + the ensemble as a third source"),
    ("cv_topo.json", "topo", "0f", "topological teacher (persistence images) → WRN-16-1"),
    ("cv_topo.json", "topo_sp1000", "0f", "topological teacher, similarity-preserving weight 1000"),
    ("cv_topo.json", "ens_topo", "0f", "ensemble + topological, dynamic coefficients"),
    ("cv_topo.json", "ens_topo_fixed", "0f", "ensemble + topological, fixed coefficients"),
    ("cv_ema.json", "alone_ema", "0g", "student alone, weight averaging (no teacher)"),
    ("cv_ema.json", "ensemble_ema", "0g", "ensemble, logit KD, weight averaging"),
    ("cv_conv_head.json", "conv_head", "0i", "text-guided VQShape, conv head, class keys"),
    ("cv_text_vs_signal.json", "signal", "0j", "signal-only VQShape (no text), conv head"),
    ("cv_teacher_longer.json", "longer", "0k", "text-guided VQShape, 30 supervised teacher epochs"),
    ("cv_coefficients.json", "fixed", "0m", "text-guided, conv head, class keys, fixed coefficients"),
    ("cv_coefficients.json", "logit", "0m", "text-guided teacher (conv head), logit KD only"),
    ("cv_teach_keys.json", "default", "0n", "text-guided, conv head, teaching with the vocabulary (no class text)"),
    ("cv_coefficients_vocab.json", "fixed", "0n", "text-guided, vocabulary keys, fixed coefficients"),
    ("cv_default_select.json", "no_logit", "0o", "text-guided, vocabulary keys, no logit KD"),
    ("cv_default_select.json", "fm", "0o", "text-guided, vocabulary keys, function matching (today's default)"),
    ("cv_default_select.json", "no_logit_fm", "0o", "text-guided, vocabulary keys, no logit KD, function matching"),
    ("cv_default_ema_select.json", "default_ema", "0p", "text-guided, vocabulary keys, weight averaging"),
    ("cv_coefficients_fm.json", "fm_fixed", "0s", "text-guided, vocabulary keys, function matching, fixed coefficients"),
)


def row(results: Path, study: str, method: str, section: str, what: str) -> Dict:
    data = json.loads((results / study).read_text())
    if method not in data.get("comparisons", {}):
        raise KeyError(f"{study} has no comparison for method {method!r} (has {sorted(data.get('comparisons', {}))})")
    cmp = data["comparisons"][method]["macro_f1"]
    if cmp["n_units"] != REFERENCE_UNITS or abs(cmp["reference_mean"] - REFERENCE_MEAN) > TOLERANCE:
        raise ValueError(f"{study}:{method} is paired against {cmp['n_units']} units of mean "
                         f"{cmp['reference_mean']:.4f}, not the shared student-alone runs "
                         f"({REFERENCE_UNITS} units, {REFERENCE_MEAN}); list it elsewhere")
    m = data["methods"][method]
    teacher = (m.get("teacher") or {}).get("macro_f1", {}).get("mean")
    return {"study": study, "method": method, "section": section, "what": what,
            "code": (data.get("code") or {}).get("commit"), "units": cmp["n_units"],
            "macro_f1": m["macro_f1"]["mean"], "macro_f1_sd": m["macro_f1"]["sd"], "teacher_macro_f1": teacher,
            "diff": cmp["diff_mean"], "ci95": cmp["diff_ci95_corrected"], "p": cmp["p"],
            "wins": cmp["wins"], "losses": cmp["losses"]}


def table(rows: List[Dict]) -> str:
    lines = ["| § | pairing | student macro-F1 | teacher macro-F1 | Δ vs alone [95 % CI] | p | wins/losses |",
             "|---|---|---|---|---|---|---|",
             f"| | WRN-16-1 alone (the reference, {REFERENCE_UNITS} units) | {REFERENCE_MEAN:.3f} | – | reference | | |"]
    for r in sorted(rows, key=lambda r: -r["diff"]):
        t = "–" if r["teacher_macro_f1"] is None else f"{r['teacher_macro_f1']:.3f}"
        lo, hi = r["ci95"]
        lines.append(f"| {r['section']} | {r['what']} (`{r['method']}`) | {r['macro_f1']:.3f} ± {r['macro_f1_sd']:.3f} | "
                     f"{t} | {r['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}] | {r['p']:.3f} | {r['wins']}/{r['losses']} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> List[Dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=str(RESULTS), help="folder of the cv_*.json study files")
    ap.add_argument("--out", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    rows = [row(Path(args.results), *spec) for spec in ROWS]
    print(table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
