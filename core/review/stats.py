"""Summaries of the review study: mean rating per method with a 95 % confidence interval, and
inter-rater agreement (Krippendorff's alpha, ordinal) per scale."""

from __future__ import annotations

import krippendorff
import numpy as np
import pandas as pd
from scipy import stats

from core.review.store import SCALES


def per_method(ratings: list[dict]) -> pd.DataFrame:
    """Mean, 95 % t-interval and count of each scale per method."""
    if not ratings:
        return pd.DataFrame(columns=["method", "scale", "mean", "ci_low", "ci_high", "n"])
    df = pd.DataFrame(ratings)
    rows = []
    for method, sub in df.groupby("method"):
        for scale in SCALES:
            x = sub[scale].to_numpy(float)
            n = len(x)
            half = stats.t.ppf(0.975, n - 1) * x.std(ddof=1) / np.sqrt(n) if n > 1 else np.nan
            rows.append({"method": method, "scale": scale, "mean": x.mean(), "ci_low": x.mean() - half,
                         "ci_high": x.mean() + half, "n": n})
    return pd.DataFrame(rows)


def agreement(ratings: list[dict]) -> dict[str, float]:
    """Krippendorff's alpha (ordinal) per scale over items rated by at least two reviewers (NaN if none)."""
    df = pd.DataFrame(ratings)
    out = {}
    for scale in SCALES:
        if df.empty or df.reviewer.nunique() < 2:
            out[scale] = float("nan")
            continue
        table = df.pivot_table(index="reviewer", columns=["case_id", "method"], values=scale, aggfunc="first")
        table = table.loc[:, table.notna().sum() >= 2]
        if table.shape[1] == 0 or len(np.unique(table.to_numpy()[~np.isnan(table.to_numpy())])) < 2:
            out[scale] = float("nan")
            continue
        out[scale] = float(krippendorff.alpha(reliability_data=table.to_numpy(float), level_of_measurement="ordinal"))
    return out
