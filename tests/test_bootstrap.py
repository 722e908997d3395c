"""Paired bootstrap over test cases for differences in macro AUROC (core/evaluation/bootstrap.py)."""

from __future__ import annotations

import numpy as np

from scipy.stats import rankdata

from core.evaluation.bootstrap import average_ranks, compare, macro_auroc_stack, paired_difference
from core.evaluation.metrics import macro_auroc


def _cases(n: int = 150, classes: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    truth = np.eye(classes)[y]

    def method(noise: float, k: int = 3) -> np.ndarray:  # k conditions (patterns × seeds) of one method
        logits = truth[None] * 2 + rng.normal(0, noise, (k, n, classes))
        p = np.exp(logits)
        return np.round(p / p.sum(-1, keepdims=True), 2)  # rounded: ties, as real probabilities have

    return y, method


def test_average_ranks_are_scipys_with_ties_averaged():
    rng = np.random.default_rng(4)
    for k, n, values in [(1, 1, 3), (3, 10, 2), (5, 200, 5), (12, 450, 10**9), (1100, 30, 4)]:  # last: in blocks
        a = rng.integers(0, values, (k, n)) / 7  # few values: long runs of ties, also across row ends
        np.testing.assert_array_equal(average_ranks(a), rankdata(a, axis=1))


def test_stacked_auroc_equals_the_metrics_module_per_condition():
    y, method = _cases()
    probs = method(1.5, k=5)
    assert np.allclose(macro_auroc_stack(y, probs), [macro_auroc(y, p) for p in probs])
    y2 = np.where(y == 3, 0, y)  # a class with no case is left out, as macro_auroc does
    assert np.allclose(macro_auroc_stack(y2, probs), [macro_auroc(y2, p) for p in probs])


def test_a_clearly_better_method_has_an_interval_above_zero_and_the_same_one_none():
    y, method = _cases()
    good, poor = method(1.0), method(3.0)
    res = paired_difference(y, good, poor, n_resamples=500)
    assert res["difference"] > 0.05 and 0 < res["low"] < res["difference"] < res["high"] and res["p"] < 0.01
    assert res["n_cases"] == len(y) and res["n_conditions"] == 3
    same = paired_difference(y, good, good, n_resamples=200)
    assert same["difference"] == 0 and same["low"] <= 0 <= same["high"] and same["p"] == 1.0
    flipped = paired_difference(y, poor, good, n_resamples=500)
    assert np.isclose(flipped["difference"], -res["difference"]) and flipped["high"] < 0


def test_compare_corrects_across_methods_and_states_the_direction():
    y, method = _cases(seed=1)
    ours = method(1.5)
    probs = {"robustmdiff": ours, "weaker": method(3.5), "stronger": method(0.6), "alike": ours.copy()}
    rows = {r["method"]: r for r in compare(y, probs, "robustmdiff", n_resamples=500)}
    assert set(rows) == {"weaker", "stronger", "alike"}
    assert rows["weaker"]["direction"] == "better" and rows["stronger"]["direction"] == "worse"
    assert rows["alike"]["direction"] == "no clear difference"
    assert all(r["p_holm"] >= r["p"] for r in rows.values())
