"""Paired statistics: exact sign-flip p against brute-force enumeration, the cluster bootstrap
against a slow reference, sample standard deviation."""
import itertools

import numpy as np
import pytest

from kd.stats import cluster_bootstrap_ci, sign_flip_p, summary


def brute_sign_flip(d):
    d = np.asarray(d, dtype=float)
    observed = abs(d.sum())
    hits = sum(abs(np.dot(signs, d)) >= observed - 1e-9 for signs in itertools.product((1, -1), repeat=len(d)))
    return hits / 2 ** len(d)


@pytest.mark.parametrize("n", [1, 2, 3, 6, 9])
def test_sign_flip_p_equals_enumeration(n):
    rng = np.random.default_rng(n)
    for d in (rng.normal(0.02, 0.05, n), rng.integers(-2, 3, n).astype(float)):   # real values, and ties
        assert sign_flip_p(d) == pytest.approx(brute_sign_flip(d), abs=1e-12)


def test_sign_flip_p_known_values():
    assert sign_flip_p([0.1] * 5) == 2 / 32                      # only all-plus and all-minus are as extreme
    assert sign_flip_p([0.0, 0.0]) == 1.0
    assert sign_flip_p([1.0, -1.0]) == 1.0
    assert sign_flip_p(np.full(30, 0.01)) == pytest.approx(2 / 2 ** 30)   # exact beyond brute-force reach
    with pytest.raises(ValueError, match="average the seeds within each fold"):
        sign_flip_p(np.ones(41))


def test_summary_uses_the_sample_sd():
    s = summary([0.8, 0.6])
    assert s["mean"] == pytest.approx(0.7) and s["sd"] == pytest.approx(0.1414213562) and s["n"] == 2
    assert summary([0.5])["sd"] == 0.0


def slow_cluster_bootstrap(folds, n_boot, rng):
    means = []
    for _ in range(n_boot):
        drawn = []
        for i in rng.integers(0, len(folds), len(folds)):
            f = folds[i]
            drawn += list(np.asarray(f)[rng.integers(0, len(f), len(f))])
        means.append(np.mean(drawn))
    return np.quantile(means, [0.025, 0.975])


def test_cluster_bootstrap_matches_a_slow_reference():
    folds = {0: [0.05, 0.02, 0.04], 1: [-0.03, -0.01], 2: [0.10, 0.12, 0.08, 0.11], 3: [0.0]}
    ci = cluster_bootstrap_ci(folds, n_boot=40_000, seed=1)
    low, high = slow_cluster_bootstrap(list(folds.values()), 20_000, np.random.default_rng(2))
    assert ci["low"] == pytest.approx(low, abs=0.006) and ci["high"] == pytest.approx(high, abs=0.006)


def test_cluster_bootstrap_is_wider_than_pretending_units_are_independent():
    # fold effects dominate: 4 folds far apart, 6 near-identical seeds each
    folds = {k: list(m + np.linspace(-0.001, 0.001, 6)) for k, m in enumerate([-0.06, 0.0, 0.03, 0.09])}
    clustered = cluster_bootstrap_ci(folds, seed=0)
    flat = cluster_bootstrap_ci({i: [v] for i, v in enumerate(sum(folds.values(), []))}, seed=0)
    assert clustered["high"] - clustered["low"] > 1.8 * (flat["high"] - flat["low"])
    constant = cluster_bootstrap_ci({0: [0.03, 0.03], 1: [0.03]})
    assert constant["low"] == pytest.approx(0.03) and constant["high"] == pytest.approx(0.03)


def test_corrected_t_matches_its_formula_and_its_ci_agrees_with_its_p():
    from scipy import stats as st
    from kd.stats import corrected_t
    rng = np.random.default_rng(0)
    d = rng.normal(0.02, 0.05, size=30)
    r = corrected_t(d.mean(), d.std(ddof=1), 30, 0.25)
    se = np.sqrt((1 / 30 + 0.25) * d.var(ddof=1))
    assert r["t"] == pytest.approx(d.mean() / se) and r["df"] == 29
    assert r["p"] == pytest.approx(2 * st.t.sf(abs(d.mean() / se), 29))
    # ratio 0 is the ordinary one-sample t-test
    assert corrected_t(d.mean(), d.std(ddof=1), 30, 0.0)["p"] == pytest.approx(st.ttest_1samp(d, 0).pvalue)
    for mean in np.linspace(-0.05, 0.05, 41):                   # p < 0.05 exactly when the CI leaves out 0
        c = corrected_t(mean, 0.05, 30, 0.25)
        assert (c["p"] < 0.05) == (c["low"] > 0 or c["high"] < 0)
    assert corrected_t(0.01, 0.05, 30, 0.25)["p"] > corrected_t(0.01, 0.05, 30, 0.0)["p"]   # overlap widens


def test_per_class_f1_by_hand_and_macro_f1_is_its_mean():
    from kd.metrics import classification_report, macro_f1, per_class_f1
    cm = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])       # class c: absent from labels and predictions
    f1 = per_class_f1(cm, ["a", "b", "c"])
    assert f1["a"] == pytest.approx(2 * 3 / (4 + 3)) and f1["b"] == pytest.approx(2 * 2 / (2 + 3)) and f1["c"] is None
    assert macro_f1(cm) == pytest.approx((f1["a"] + f1["b"]) / 2)
    rep = classification_report(np.array([0, 0, 0, 0, 1, 1]), np.array([0, 0, 0, 1, 1, 1]), ["a", "b", "c"])
    assert rep["per_class_f1"] == f1
