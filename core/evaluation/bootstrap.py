"""Paired bootstrap intervals for differences in macro AUROC between methods over test cases (issue 17),
and the pieces that `core/evaluation/hierarchical.py` (seeds and test cases, issue 28) shares with it.

Why not the Wilcoxon test over patterns × seeds: those pairs share the same test cases, so they are not
independent and its p-values are optimistic. Here the unit that is resampled is the test case: every
resample draws cases with replacement and evaluates both methods on exactly those cases, for every
stacked condition (availability patterns, seeds) at once, and the difference is averaged over the stack.
The interval is scipy's percentile bootstrap; the p-value is the two-sided bootstrap one (twice the share
of resampled differences on the far side of zero); Holm's correction runs across the compared methods,
and each comparison states its direction.

One verdict rule: a comparison reads 'better' or 'worse' only where its Holm-adjusted p < alpha, and the
interval shown with it is adjusted the same way (`adjusted_interval`), so that it excludes zero exactly
where the adjusted p is below alpha; the unadjusted 95 % interval is kept in the row as well.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.stats import bootstrap

from core.review.stats import holm


def _scored_classes(y: np.ndarray, n_classes: int, classes: list[int] | None) -> list[int]:
    """The classes a macro average reads: those (of `classes`, or all) with positives and negatives among `y`."""
    counts = np.bincount(y, minlength=n_classes)  # labels are class indices
    return [c for c in (range(n_classes) if classes is None else classes) if 0 < counts[c] < len(y)]


RANK_ROWS = 512  # rows ranked per pass: 2,688 rows of 184 took 1.5× as long in one pass (out of the CPU's caches)


def average_ranks(a: np.ndarray) -> np.ndarray:
    """Ranks along the last axis of a 2-D array, ties averaged (scipy's `rankdata(a, axis=1)`, without its
    per-call overhead: the bootstrap ranks a few hundred thousand small arrays)."""
    if len(a) <= RANK_ROWS:
        return _ranks(a)
    return np.concatenate([_ranks(a[i:i + RANK_ROWS]) for i in range(0, len(a), RANK_ROWS)])


def _ranks(a: np.ndarray) -> np.ndarray:
    k, n = a.shape
    order = np.argsort(a, axis=1, kind="stable")
    ordered = np.take_along_axis(a, order, axis=1)
    starts_group = np.ones((k, n), bool)
    starts_group[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    starts = np.flatnonzero(starts_group)  # flat positions; every row starts a group
    sizes = np.diff(np.append(starts, k * n))
    mean_rank = starts % n + (sizes + 1) / 2  # 1-based rank of a tie group: its first place plus half its width
    ranks = np.empty((k, n))
    np.put_along_axis(ranks, order, np.repeat(mean_rank, sizes).reshape(k, n), axis=1)
    return ranks


def macro_auroc_stack(y: np.ndarray, probs: np.ndarray, classes: list[int] | None = None) -> np.ndarray:
    """Macro one-vs-rest AUROC of each stacked condition: `probs` (k, n, classes) on cases with labels
    `y` (n,) → (k,). Rank-based (Mann–Whitney, ties averaged), so one call ranks every condition at once;
    classes without positives or negatives among the cases are left out, as in `metrics.macro_auroc`
    (`classes`: average over these only, e.g. the rare ones)."""
    cs = _scored_classes(y, probs.shape[2], classes)
    k, n = probs.shape[:2]
    if not cs:
        return np.full(k, np.nan)
    # every condition's every class ranked in one call (the per-call overhead dominates on ~200 cases)
    ranks = average_ranks(np.moveaxis(probs[:, :, cs], 2, 1).reshape(k * len(cs), n)).reshape(k, len(cs), n)
    pos = y[None, :] == np.asarray(cs)[:, None]  # (classes, n)
    n_pos = pos.sum(1)
    rank_sums = (ranks * pos).sum(2)  # sums of half-integers: exact in any order
    auc = (rank_sums - n_pos * (n_pos + 1) / 2) / (n_pos * (n - n_pos))
    out = np.zeros(k)
    for j in range(len(cs)):  # summed class by class, in order, as the macro average always was
        out += auc[:, j]
    return out / len(cs)


def macro_recall_stack(y: np.ndarray, probs: np.ndarray, classes: list[int] | None = None) -> np.ndarray:
    """Macro recall (the top answer is the true class) of each stacked condition, over `classes` with
    positives among `y`, as `metrics.classification_metrics` averages it: (k, n, classes) → (k,)."""
    pred = probs.argmax(2)
    cs = _scored_classes(y, probs.shape[2], classes)
    if not cs:
        return np.full(probs.shape[0], np.nan)
    return np.mean([(pred[:, y == c] == c).mean(1) for c in cs], axis=0)


def accuracy_stack(y: np.ndarray, probs: np.ndarray, classes: list[int] | None = None) -> np.ndarray:
    """Accuracy on the cases whose label is one of `classes` (with positives among `y`), per condition."""
    cs = _scored_classes(y, probs.shape[2], classes)
    sel = np.isin(y, cs)
    if not sel.any():
        return np.full(probs.shape[0], np.nan)
    return (probs[:, sel].argmax(2) == y[sel]).mean(1)


def paired_difference(y: np.ndarray, ours: np.ndarray, theirs: np.ndarray, n_resamples: int = 2000,
                      confidence: float = 0.95, seed: int = 0) -> dict:
    """Mean difference in macro AUROC (ours − theirs) over the stacked conditions, with its paired
    bootstrap interval over cases and two-sided p-value. `ours`, `theirs`: (k, n, classes) or (n, classes)."""
    ours, theirs = np.asarray(ours, float), np.asarray(theirs, float)
    if ours.ndim == 2:
        ours, theirs = ours[None], theirs[None]
    if ours.shape != theirs.shape or ours.shape[1] != len(y):
        raise ValueError(f"both methods need probabilities for the same {len(y)} cases: {ours.shape} vs {theirs.shape}")

    def difference(idx: np.ndarray) -> float:
        idx = idx.astype(int)
        return float(np.mean(macro_auroc_stack(y[idx], ours[:, idx]) - macro_auroc_stack(y[idx], theirs[:, idx])))

    res = bootstrap((np.arange(len(y)),), difference, n_resamples=n_resamples, confidence_level=confidence,
                    method="percentile", vectorized=False, rng=np.random.default_rng(seed))
    dist = res.bootstrap_distribution[np.isfinite(res.bootstrap_distribution)]
    p = two_sided_p(dist)
    return {"difference": difference(np.arange(len(y))), "low": float(res.confidence_interval.low),
            "high": float(res.confidence_interval.high), "p": p, "n_cases": len(y), "n_conditions": ours.shape[0],
            "n_resamples": n_resamples, "distribution": dist}


def adjusted_level(p: float, p_holm: float, step: int, alpha: float = 0.05) -> float:
    """The two-sided error level at which this comparison's own interval matches its Holm verdict.

    Holm multiplies each p by a factor c = p_holm / p (its step's m - i + 1 = `step`, raised where the
    step-down keeps the adjusted p monotone). The percentile interval at error level a excludes zero when
    p < a, so at a = alpha / c it excludes zero exactly when p_holm < alpha. Where p is 0 (no resample
    crossed zero) the step's own factor is used."""
    factor = p_holm / p if p > 0 and p_holm > 0 else step
    return float(alpha / max(factor, 1.0))


def adjusted_interval(dist: np.ndarray, level: float) -> tuple[float, float]:
    """The percentile interval of a bootstrap distribution at two-sided error `level` (NaN: none)."""
    if not len(dist):
        return float("nan"), float("nan")
    lo, hi = np.quantile(dist, [level / 2, 1 - level / 2], method="inverted_cdf")
    return float(lo), float(hi)


def two_sided_p(dist: np.ndarray) -> float:
    """The two-sided bootstrap p of a distribution of differences: twice the share on the far side of zero."""
    return min(1.0, 2 * min(float((dist <= 0).mean()), float((dist >= 0).mean()))) if len(dist) else 1.0


def decide(rows: list[dict], dists: list[np.ndarray], alpha: float = 0.05) -> list[dict]:
    """Holm across `rows` (each with 'p' and 'difference'), the direction from the adjusted p, and each row's
    interval at the level of its adjusted test (`adjusted_level`) from its bootstrap distribution."""
    steps = {i: len(rows) - k for k, i in enumerate(np.argsort([r["p"] for r in rows], kind="stable"))}
    for i, (row, adjusted) in enumerate(zip(rows, holm([r["p"] for r in rows]))):
        row["p_holm"] = adjusted
        row["direction"] = ("no clear difference" if not adjusted < alpha
                            else "better" if row["difference"] > 0 else "worse")
        level = adjusted_level(row["p"], adjusted, steps[i], alpha)
        row["low_holm"], row["high_holm"] = adjusted_interval(dists[i], level)
        row["confidence_holm"] = 1 - level
    return rows


def compare(y: np.ndarray, probs: Mapping[str, np.ndarray], reference: str, alpha: float = 0.05,
            n_resamples: int = 2000, seed: int = 0) -> list[dict]:
    """`reference` against every other method of `probs` (each (k, n, classes) on the same cases and
    conditions), test cases resampled only: difference, interval, p, Holm-corrected p across the methods,
    and the direction: 'better' or 'worse' (the reference, where the corrected p < alpha) or 'no clear
    difference'. Training variance is left out: `hierarchical.compare` resamples seeds as well."""
    rows = [{"method": m, **paired_difference(y, probs[reference], p, n_resamples, seed=seed)}
            for m, p in probs.items() if m != reference]
    return decide(rows, [r.pop("distribution") for r in rows], alpha)
