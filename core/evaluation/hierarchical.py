"""Hierarchical bootstrap over training seeds and test cases (issue 28): intervals that include training variance.

The paired bootstrap over test cases (core/evaluation/bootstrap.py) treats the trained models as fixed, yet
two seeds of one method differ by up to 1 AUROC point, the size of several reported differences. Here each
resample draws
  1. the test cases, with replacement: the same cases for every method (so each pair stays paired), and
  2. for every method on its own, its training seeds, with replacement (as many as it has),
then scores each drawn seed on the drawn cases, averaged over the stacked conditions (availability patterns),
and each method's value is the mean over its drawn seeds. The difference of the reference against a method,
over the resamples, gives the percentile interval and the two-sided bootstrap p; Holm runs across the
methods, and the verdict and the adjusted interval follow from the Holm-adjusted p (`bootstrap.decide`).

With one seed per method step 2 draws nothing: the interval covers test cases only, and the rows say so
(`seeds_resampled` False). With few seeds (3) resampling them understates their spread a little (by a
factor (S - 1) / S in variance): the interval is still wider than one that leaves seeds out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np

from core.evaluation.bootstrap import adjusted_interval, decide, macro_auroc_stack, two_sided_p

Statistic = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (labels (n,), probs (k, n, classes)) → (k,)
# what a row's interval resampled, in words (the tables' captions say it)
RESAMPLED = {True: "training seeds (per method) and test cases", False: "test cases only (one seed per method)"}


def seeds_first(probs: np.ndarray) -> np.ndarray:
    """(seeds, conditions, n, classes); a (seeds, n, classes) array is one condition."""
    probs = np.asarray(probs, float)
    return probs[:, None] if probs.ndim == 3 else probs


def per_seed(y: np.ndarray, probs: np.ndarray, idx: np.ndarray, statistic: Statistic) -> np.ndarray:
    """`statistic` of every seed on the cases `idx`, averaged over the seed's conditions: (seeds,)."""
    s, c = probs.shape[:2]
    return statistic(y[idx], probs[:, :, idx].reshape(s * c, len(idx), -1)).reshape(s, c).mean(1)


def draws(n_cases: int, n_seeds: Mapping[str, int], n_resamples: int, seed: int) -> Iterator[tuple[np.ndarray, dict]]:
    """(case indices, {method: seed indices}) of each resample: cases shared, seeds drawn per method."""
    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        yield rng.integers(0, n_cases, n_cases), {m: rng.integers(0, s, s) for m, s in n_seeds.items()}


def _checked(y: np.ndarray, probs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {m: seeds_first(p) for m, p in probs.items()}
    for m, p in out.items():
        if p.ndim != 4 or p.shape[2] != len(y):
            raise ValueError(f"{m}: probabilities (seeds, conditions, {len(y)} cases, classes) expected, got {p.shape}")
    return out


def compare(y: np.ndarray, probs: Mapping[str, np.ndarray], reference: str, alpha: float = 0.05,
            n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95,
            statistic: Statistic = macro_auroc_stack) -> list[dict]:
    """`reference` against every other method of `probs` (each (seeds, conditions, n, classes) on the same
    cases and conditions; seeds may differ in number): the difference in `statistic` (mean over seeds and
    conditions), its hierarchical-bootstrap interval, p, Holm-adjusted p, direction and adjusted interval."""
    probs = _checked(y, probs)
    everyone = np.arange(len(y))
    point = {m: float(per_seed(y, p, everyone, statistic).mean()) for m, p in probs.items()}
    others = [m for m in probs if m != reference]
    dist = np.full((n_resamples, len(others)), np.nan)
    # every seed and condition of every method scored in one call per resample (they share the drawn cases):
    # the statistic's per-call overhead, not its arithmetic, dominated with one call per method
    stacked = np.concatenate([p.reshape(-1, len(y), p.shape[-1]) for p in probs.values()])
    bounds = np.cumsum([0] + [p.shape[0] * p.shape[1] for p in probs.values()])
    for b, (idx, picks) in enumerate(draws(len(y), {m: p.shape[0] for m, p in probs.items()}, n_resamples, seed)):
        scores = statistic(y[idx], stacked[:, idx])
        value = {m: float(scores[bounds[j]:bounds[j + 1]].reshape(p.shape[:2]).mean(1)[picks[m]].mean())
                 for j, (m, p) in enumerate(probs.items())}
        dist[b] = [value[reference] - value[m] for m in others]
    rows, dists = [], []
    for j, m in enumerate(others):
        d = dist[:, j][np.isfinite(dist[:, j])]  # a resample without positives of some class is left out
        low, high = adjusted_interval(d, 1 - confidence)
        resampled = max(probs[m].shape[0], probs[reference].shape[0]) > 1
        rows.append({"method": m, "difference": point[reference] - point[m], "low": low, "high": high,
                     "p": two_sided_p(d), "n_cases": len(y), "n_conditions": probs[m].shape[1],
                     "n_seeds": probs[m].shape[0], "n_seeds_reference": probs[reference].shape[0],
                     "n_resamples": n_resamples, "seeds_resampled": resampled, "resampled": RESAMPLED[resampled]})
        dists.append(d)
    return decide(rows, dists, alpha)


def intervals(y: np.ndarray, probs: np.ndarray, statistics: Mapping[str, Statistic], n_resamples: int = 2000,
              seed: int = 0, confidence: float = 0.95) -> dict[str, dict]:
    """One method's `statistics` (each the mean over seeds and conditions) with their hierarchical-bootstrap
    intervals (seeds and cases resampled, the same draws for every statistic; cases only with one seed)."""
    probs = _checked(y, {"one": probs})["one"]
    values = {k: np.full(n_resamples, np.nan) for k in statistics}
    for b, (idx, picks) in enumerate(draws(len(y), {"one": probs.shape[0]}, n_resamples, seed)):
        drawn = probs[picks["one"]][:, :, idx]  # the drawn seeds on the drawn cases
        for k, statistic in statistics.items():
            values[k][b] = per_seed(y[idx], drawn, np.arange(len(idx)), statistic).mean()
    everyone = np.arange(len(y))
    out = {}
    for k, statistic in statistics.items():
        low, high = adjusted_interval(values[k][np.isfinite(values[k])], 1 - confidence)
        out[k] = {"value": float(per_seed(y, probs, everyone, statistic).mean()), "low": low, "high": high,
                  "n_seeds": probs.shape[0], "seeds_resampled": probs.shape[0] > 1, "n_resamples": n_resamples}
    return out
