"""Statistics for paired comparisons under subject-fold cross-validation (numpy; scipy for the t distribution).

A *paired unit* is one (fold, seed): both methods trained on the same training subjects with the
same seed and tested on the same held-out subjects. Units of one fold share their test subjects, so
they are not independent; the bootstrap below resamples folds first and seeds within each fold
(a two-stage cluster bootstrap), which keeps that dependence in the interval.

    summary(values)                       mean, sample sd (n - 1), n
    cluster_bootstrap_ci(diffs_by_fold)   95 % CI of the mean paired difference
    sign_flip_p(diffs)                    exact two-sided sign-flip (permutation) p over paired units
    corrected_t(mean, sd, n, ratio)       Nadeau-Bengio corrected resampled t: p and CI from one model

Why the corrected test is the one a claim rests on: the sign-flip p treats every (fold, seed) unit as
independent, but the units of a fold share their test subjects (and most of their training subjects
with every other fold), so it is too small; the cluster bootstrap CI keeps that dependence, so the two
could disagree (a p of 0.03 beside a CI that holds 0). The corrected resampled t-test (Nadeau & Bengio,
Machine Learning 52, 2003; in its repeated k-fold form, Bouckaert & Frank, PAKDD 2004) inflates the
variance of the mean difference over J units from s^2 / J to (1/J + n_test/n_train) s^2 for the
overlap of the training sets, and its p and CI come from the same t distribution with J - 1 degrees of
freedom: p < 0.05 exactly when the 95 % CI excludes 0.
"""
from __future__ import annotations

from typing import Dict, Mapping, Sequence

import numpy as np
from scipy import stats as st

EXACT_SIGN_FLIP_MAX_UNITS = 40     # 2 x 2^20 half-sums; beyond this the test is refused, not approximated


def summary(values: Sequence[float]) -> Dict[str, float]:
    """Mean, sample standard deviation (n - 1 in the denominator; 0 for one value) and count."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        raise ValueError("no values to summarise")
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


def cluster_bootstrap_ci(diffs_by_fold: Mapping[object, Sequence[float]], level: float = 0.95,
                         n_boot: int = 10_000, seed: int = 0) -> Dict[str, float]:
    """Percentile CI of the mean paired difference: each replicate draws the folds with replacement,
    then within each drawn fold its seeds with replacement, and takes the mean over all drawn units."""
    folds = [np.asarray(d, dtype=float) for d in diffs_by_fold.values()]
    if not folds or any(f.size == 0 for f in folds):
        raise ValueError("every fold needs at least one paired difference")
    rng = np.random.default_rng(seed)
    k = len(folds)
    sizes = np.array([f.size for f in folds])
    padded = np.zeros((k, sizes.max()))
    for i, f in enumerate(folds):
        padded[i, :f.size] = f
    pick = rng.integers(0, k, size=(n_boot, k))                              # folds drawn per replicate
    n_in = sizes[pick]                                                        # (B, k) seeds in each drawn fold
    seeds = (rng.random((n_boot, k, sizes.max())) * n_in[..., None]).astype(int)   # seed draws within folds
    valid = np.arange(sizes.max())[None, None, :] < n_in[..., None]          # only n_in draws per fold count
    drawn = padded[pick[..., None], seeds]
    means = (drawn * valid).sum((1, 2)) / valid.sum((1, 2))
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return {"low": float(low), "high": float(high), "level": level, "n_boot": n_boot}


def _half_sums(d: np.ndarray) -> np.ndarray:
    """All 2^len(d) signed sums of d."""
    sums = np.zeros(1)
    for x in d:
        sums = np.concatenate([sums + x, sums - x])
    return sums


def sign_flip_p(diffs: Sequence[float]) -> float:
    """Exact two-sided p of the sign-flip test: the share of the 2^n sign patterns whose |sum| is at
    least the observed |sum| (the observed pattern counts, so p >= 2 / 2^n). Exact by splitting the
    units in two halves and counting pairs of half-sums with a sorted search (meet in the middle)."""
    d = np.asarray(diffs, dtype=float)
    n = d.size
    if n == 0:
        raise ValueError("no paired differences")
    if n > EXACT_SIGN_FLIP_MAX_UNITS:
        raise ValueError(f"{n} paired units: the exact sign-flip test enumerates 2^n patterns and stops at "
                         f"{EXACT_SIGN_FLIP_MAX_UNITS}; average the seeds within each fold first")
    observed = abs(d.sum())
    tol = 1e-9 * max(1.0, np.abs(d).sum())
    a, b = _half_sums(d[: n // 2]), np.sort(_half_sums(d[n // 2:]))
    # count pairs with a + b >= observed - tol, plus pairs with a + b <= -(observed - tol)
    upper = len(b) - np.searchsorted(b, observed - tol - a, side="left")
    lower = np.searchsorted(b, -(observed - tol) - a, side="right")
    count = upper + lower
    if observed <= tol:                # every pattern is as extreme; counted twice above
        count = np.full_like(count, len(b))
    return float(count.sum() / 2.0 ** n)


def corrected_t(mean: float, sd: float, n: int, test_train_ratio: float, level: float = 0.95) -> Dict[str, float]:
    """Corrected resampled t-test of a mean paired difference over n units (see the module docstring).

    mean, sd: of the n unit differences (sd with n - 1); test_train_ratio: test over training windows (or
    subjects) of one fold. Returns p (two-sided), the CI at `level`, t and the degrees of freedom."""
    if n < 2:
        raise ValueError(f"the corrected t-test needs at least 2 paired units, got {n}")
    if test_train_ratio < 0:
        raise ValueError(f"test_train_ratio={test_train_ratio} must be >= 0")
    se = float(np.sqrt((1.0 / n + test_train_ratio) * sd ** 2))
    df = n - 1
    half = float(st.t.ppf(0.5 + level / 2, df)) * se
    if se == 0:
        return {"p": 1.0 if mean == 0 else 0.0, "low": mean, "high": mean, "t": float("nan"), "df": df}
    t = mean / se
    return {"p": float(2 * st.t.sf(abs(t), df)), "low": mean - half, "high": mean + half, "t": float(t), "df": df}
