"""Summaries of the review study.

Ratings are on a bounded 1–5 scale and few per group, so every interval is a bootstrap percentile interval
that resamples cases (the study's unit: ratings of one case, by several reviewers or methods, are not
independent), which keeps it inside the scale and honest about shared cases; a t-interval on two ratings
read "from −15.56 to 22.56" (issue 29). Below MIN_RATINGS ratings or from a single case no interval is
given: the table says "too few ratings".

- Mean rating of each scale per model, per explanation method and per (model, method), with that interval.
- The paired comparison of RobustMDiff with each comparison model: the ratings one reviewer gave the same
  case and explanation method under RobustMDiff and under the comparison model form a pair; per scale,
  the mean difference (RobustMDiff minus the comparison model: positive means RobustMDiff was rated
  higher) with its case-bootstrap interval and two-sided bootstrap p-value. One verdict rule per table:
  Bonferroni across the comparison models of a scale, so the interval is the simultaneous one (level
  1 − ALPHA/m), the p shown beside it is the corrected one (m × p), and "interval excludes zero" and
  "corrected p < ALPHA" are the same statement (the interval's ends are the bootstrap order statistics
  that the p-value counts), never a contradiction on one row.
- Inter-rater agreement (Krippendorff's alpha, ordinal) per scale, over the items (case, model, method)
  rated by at least two reviewers.
"""

from __future__ import annotations

import krippendorff
import numpy as np
import pandas as pd

from core.review.store import REFERENCE_MODEL, SCALES

LOW, HIGH = 1, 5  # the Likert scale
MIN_RATINGS = 5  # fewer ratings (or pairs), or a single case: no interval
ALPHA = 0.05
RESAMPLES = 4000
SEED = 0  # the same ratings always give the same interval
SUMMARY = ["scale", "mean", "ci_low", "ci_high", "n", "n_cases", "range"]
PAIRED = ["scale", "reference", "comparison", "n_pairs", "n_cases", "n_nonzero", "mean_diff", "median_diff",
          "ci_low", "ci_high", "range", "confidence", "p", "p_corrected", "verdict"]
TOO_FEW = f"too few ratings (needs {MIN_RATINGS}, from 2 or more cases)"
TOO_FEW_PAIRS = f"too few pairs (needs {MIN_RATINGS}, from 2 or more cases)"


def frame(ratings: list[dict]) -> pd.DataFrame:
    """The ratings as a table; ratings without a model (from before the model factor) are RobustMDiff's."""
    df = pd.DataFrame(ratings)
    if "model" not in df:
        df["model"] = REFERENCE_MODEL
    df["model"] = df["model"].fillna(REFERENCE_MODEL)
    return df


def enough(n: int, n_cases: int) -> bool:
    """Whether an interval is worth giving: MIN_RATINGS observations from at least two cases."""
    return n >= MIN_RATINGS and n_cases >= 2


def case_bootstrap(values: np.ndarray, cases: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """Means of `values` over `resamples` resamples of the cases (with replacement; each drawn case brings
    all its values)."""
    _, code = np.unique(cases, return_inverse=True)
    sums, counts = np.bincount(code, values), np.bincount(code).astype(float)
    draw = np.random.default_rng(seed).integers(0, len(sums), (resamples, len(sums)))
    return sums[draw].sum(1) / counts[draw].sum(1)


def interval(dist: np.ndarray, tail: float) -> tuple[float, float]:
    """The percentile interval leaving `tail` on each side, as order statistics of `dist` chosen so that
    it excludes zero exactly when fewer than tail × len(dist) resamples lie on zero's side of it (the
    two-sided bootstrap p of `bootstrap_p` is then below 2 × tail)."""
    return (float(np.quantile(dist, tail, method="inverted_cdf")),
            float(-np.quantile(-dist, tail, method="inverted_cdf")))


def bootstrap_p(dist: np.ndarray) -> float:
    """Two-sided: twice the share of resampled differences on the far side of zero (at most 1). None of
    them there reads as 1 / len(dist), the resolution of the bootstrap, never as p = 0 (still below any
    corrected threshold of fewer than ALPHA × RESAMPLES comparisons, so the duality with `interval` holds)."""
    share = min(float((dist <= 0).mean()), float((dist >= 0).mean()))
    return min(1.0, max(2 * share, 1 / len(dist)))


def range_text(low: float, high: float, signed: bool = False, too_few: str = TOO_FEW) -> str:
    """The interval as the admin reads it (`signed`: a difference, with its signs), or why there is none."""
    if low != low or high != high:
        return too_few
    return f"{low:+.2f} to {high:+.2f}" if signed else f"{low:.2f} to {high:.2f}"


def summary(ratings: list[dict], by: tuple[str, ...] = ("method",)) -> pd.DataFrame:
    """Mean, 95 % case-bootstrap interval (inside 1–5) and counts of each scale per group of `by`."""
    if not ratings:
        return pd.DataFrame(columns=[*by, *SUMMARY])
    df = frame(ratings)
    rows = []
    for group, sub in df.groupby(list(by), sort=True):
        keys = dict(zip(by, group if isinstance(group, tuple) else (group,)))
        cases = sub["case_id"].astype(str).to_numpy()
        n, n_cases = len(sub), len(set(cases))
        for scale in SCALES:
            x = sub[scale].to_numpy(float)
            low = high = np.nan
            if enough(n, n_cases):
                low, high = interval(case_bootstrap(x, cases), ALPHA / 2)
            rows.append({**keys, "scale": scale, "mean": float(x.mean()), "ci_low": low, "ci_high": high, "n": n,
                         "n_cases": n_cases, "range": range_text(low, high)})
    return pd.DataFrame(rows, columns=[*by, *SUMMARY])


def per_method(ratings: list[dict]) -> pd.DataFrame:
    """Mean, 95 % interval and counts of each scale per explanation method (all models together)."""
    return summary(ratings, ("method",))


def per_model(ratings: list[dict]) -> pd.DataFrame:
    """Mean, 95 % interval and counts of each scale per model (all explanation methods together)."""
    return summary(ratings, ("model",))


def per_model_method(ratings: list[dict]) -> pd.DataFrame:
    return summary(ratings, ("model", "method"))


def holm(p: list[float]) -> list[float]:
    """Holm's step-down adjustment (NaN p-values are left out and stay NaN); used by core.evaluation."""
    p = np.asarray(p, float)
    out = np.full(len(p), np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    order = idx[np.argsort(p[idx], kind="stable")]
    m, running = len(order), 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * p[i]))
        out[i] = running
    return out.tolist()


def pairs(ratings: list[dict], comparison: str, scale: str, reference: str = REFERENCE_MODEL) -> pd.DataFrame:
    """reviewer, case_id, method, and the two ratings (`reference`, `comparison`) for every matched pair."""
    df = frame(ratings)
    keys = ["reviewer", "case_id", "method"]
    a = df[df.model == reference][[*keys, scale]].rename(columns={scale: "reference"})
    b = df[df.model == comparison][[*keys, scale]].rename(columns={scale: "comparison"})
    return a.merge(b, on=keys, how="inner")


def verdict(reference: str, comparison: str, n_pairs: int, n_cases: int, mean: float, low: float, high: float) -> str:
    """The table's one rule: a model is rated higher when the corrected interval excludes zero."""
    if not n_pairs:
        return "no pairs"
    if not enough(n_pairs, n_cases):
        return "too few pairs"
    if low > 0 or high < 0:
        return f"{reference} higher" if mean > 0 else f"{comparison} higher"
    return "no clear difference"


def _compare(pr: pd.DataFrame, tail: float) -> dict:
    d = (pr.reference - pr.comparison).to_numpy(float)
    cases = pr.case_id.astype(str).to_numpy()
    out = {"n_pairs": len(d), "n_cases": len(set(cases)), "n_nonzero": int((d != 0).sum()),
           "mean_diff": float(d.mean()) if len(d) else np.nan, "median_diff": float(np.median(d)) if len(d) else np.nan,
           "ci_low": np.nan, "ci_high": np.nan, "p": np.nan}
    if enough(out["n_pairs"], out["n_cases"]):
        dist = case_bootstrap(d, cases)
        out["ci_low"], out["ci_high"] = interval(dist, tail)
        out["p"] = bootstrap_p(dist)
    return out


def paired_tests(ratings: list[dict], reference: str = REFERENCE_MODEL) -> pd.DataFrame:
    """RobustMDiff against each other model, per scale: the mean paired difference with its simultaneous
    (Bonferroni) case-bootstrap interval, the p-value and its correction, and the verdict they share.
    Empty when there is nothing to compare."""
    if not ratings:
        return pd.DataFrame(columns=PAIRED)
    df = frame(ratings)
    others = sorted(m for m in df.model.unique() if m != reference)
    if reference not in set(df.model) or not others:
        return pd.DataFrame(columns=PAIRED)
    m = len(others)
    tail = ALPHA / (2 * m)  # each side of each of the m intervals of a scale
    rows = []
    for scale in SCALES:
        for other in others:
            row = {"scale": scale, "reference": reference, "comparison": other,
                   **_compare(pairs(ratings, other, scale, reference), tail)}
            row["range"] = range_text(row["ci_low"], row["ci_high"], signed=True, too_few=TOO_FEW_PAIRS)
            row["confidence"] = 1 - ALPHA / m
            row["p_corrected"] = min(1.0, m * row["p"]) if row["p"] == row["p"] else np.nan
            row["verdict"] = verdict(reference, other, row["n_pairs"], row["n_cases"], row["mean_diff"],
                                     row["ci_low"], row["ci_high"])
            rows.append(row)
    return pd.DataFrame(rows, columns=PAIRED)


def agreement(ratings: list[dict]) -> dict[str, float]:
    """Krippendorff's alpha (ordinal) per scale over items rated by at least two reviewers (NaN if none)."""
    df = frame(ratings) if ratings else pd.DataFrame()
    out = {}
    for scale in SCALES:
        if df.empty or df.reviewer.nunique() < 2:
            out[scale] = float("nan")
            continue
        table = df.pivot_table(index="reviewer", columns=["case_id", "model", "method"], values=scale,
                               aggfunc="first")
        table = table.loc[:, table.notna().sum() >= 2]
        if table.shape[1] == 0 or len(np.unique(table.to_numpy()[~np.isnan(table.to_numpy())])) < 2:
            out[scale] = float("nan")
            continue
        out[scale] = float(krippendorff.alpha(reliability_data=table.to_numpy(float), level_of_measurement="ordinal"))
    return out
