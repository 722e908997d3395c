"""Summaries of the review study.

- Mean rating of each scale per model, per explanation method and per (model, method), with a 95 %
  t-interval over the ratings (each rating counted as one observation: the interval does not widen for
  ratings that share a reviewer or a case, so read it as descriptive).
- The paired comparison of RobustMDiff with each comparison model: the ratings one reviewer gave the same
  case and explanation method under RobustMDiff and under the comparison model form a pair; a Wilcoxon
  signed-rank test (two-sided; zero differences dropped, Wilcoxon's original treatment) per scale, its p
  Holm-corrected across the comparison models of that scale. Differences are RobustMDiff minus the
  comparison model, so a positive mean difference means RobustMDiff was rated higher.
- Inter-rater agreement (Krippendorff's alpha, ordinal) per scale, over the items (case, model, method)
  rated by at least two reviewers.
"""

from __future__ import annotations

import krippendorff
import numpy as np
import pandas as pd
from scipy import stats

from core.review.store import REFERENCE_MODEL, SCALES

SUMMARY = ["scale", "mean", "ci_low", "ci_high", "n"]
PAIRED = ["scale", "reference", "comparison", "n_pairs", "n_nonzero", "mean_diff", "median_diff", "direction",
          "statistic", "p", "p_holm"]


def frame(ratings: list[dict]) -> pd.DataFrame:
    """The ratings as a table; ratings without a model (from before the model factor) are RobustMDiff's."""
    df = pd.DataFrame(ratings)
    if "model" not in df:
        df["model"] = REFERENCE_MODEL
    df["model"] = df["model"].fillna(REFERENCE_MODEL)
    return df


def summary(ratings: list[dict], by: tuple[str, ...] = ("method",)) -> pd.DataFrame:
    """Mean, 95 % t-interval and count of each scale per group of `by` (columns of the ratings)."""
    if not ratings:
        return pd.DataFrame(columns=[*by, *SUMMARY])
    df = frame(ratings)
    rows = []
    for group, sub in df.groupby(list(by), sort=True):
        keys = dict(zip(by, group if isinstance(group, tuple) else (group,)))
        for scale in SCALES:
            x = sub[scale].to_numpy(float)
            n = len(x)
            half = stats.t.ppf(0.975, n - 1) * x.std(ddof=1) / np.sqrt(n) if n > 1 else np.nan
            rows.append({**keys, "scale": scale, "mean": x.mean(), "ci_low": x.mean() - half,
                         "ci_high": x.mean() + half, "n": n})
    return pd.DataFrame(rows)


def per_method(ratings: list[dict]) -> pd.DataFrame:
    """Mean, 95 % t-interval and count of each scale per explanation method (all models together)."""
    return summary(ratings, ("method",))


def per_model(ratings: list[dict]) -> pd.DataFrame:
    """Mean, 95 % t-interval and count of each scale per model (all explanation methods together)."""
    return summary(ratings, ("model",))


def per_model_method(ratings: list[dict]) -> pd.DataFrame:
    return summary(ratings, ("model", "method"))


def holm(p: list[float]) -> list[float]:
    """Holm's step-down adjustment (NaN p-values are left out and stay NaN)."""
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


def paired_tests(ratings: list[dict], reference: str = REFERENCE_MODEL) -> pd.DataFrame:
    """RobustMDiff against each other model, per scale: Wilcoxon signed-rank on matched pairs, Holm across
    the comparison models of each scale. Empty when there is nothing to compare."""
    if not ratings:
        return pd.DataFrame(columns=PAIRED)
    df = frame(ratings)
    others = sorted(m for m in df.model.unique() if m != reference)
    if reference not in set(df.model) or not others:
        return pd.DataFrame(columns=PAIRED)
    rows = []
    for scale in SCALES:
        block = []
        for other in others:
            pr = pairs(ratings, other, scale, reference)
            d = (pr.reference - pr.comparison).to_numpy(float)
            nonzero = int((d != 0).sum())
            statistic = p = np.nan
            if len(d) and nonzero == 0:
                p = 1.0  # every pair tied: no evidence of a difference
            elif nonzero:
                res = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
                statistic, p = float(res.statistic), float(res.pvalue)
            mean = float(d.mean()) if len(d) else np.nan
            direction = ("no pairs" if not len(d) else f"{reference} higher" if mean > 0 else
                         f"{other} higher" if mean < 0 else "equal")
            block.append({"scale": scale, "reference": reference, "comparison": other, "n_pairs": int(len(d)),
                          "n_nonzero": nonzero, "mean_diff": mean,
                          "median_diff": float(np.median(d)) if len(d) else np.nan, "direction": direction,
                          "statistic": statistic, "p": p})
        for row, adjusted in zip(block, holm([r["p"] for r in block])):
            row["p_holm"] = adjusted
        rows += block
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
