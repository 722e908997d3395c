"""RobustMDiff against each method: the bootstrap comparisons of an evaluation, their Holm adjustment, the
verdict ("better", "worse", "no clear difference") and the words and tables that show them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.evaluation.report import REFERENCE, pattern_columns
from core.names import display_name

# the comparisons every evaluation bootstraps: each stacks its conditions over every seed, on the same cases
BOOTSTRAP_SETS = {"patterns": "averaged over every availability pattern (complete test cases)",
                  "random_50": "50 % of modalities missing at random", "mnar_50":
                  "50 % missing, more often for severe and rare cases", "natural": "modalities missing as they come"}


def bootstrap_conditions(key: str, names: list[str]) -> list[str]:
    return pattern_columns(names) if key == "patterns" else [key]


def bootstraps(probs: dict[tuple[str, int], dict[str, np.ndarray]], where: dict[str, np.ndarray], labels: np.ndarray,
               seeds: list[int], names: list[str], n_resamples: int = 2000) -> dict[str, list[dict]]:
    """RobustMDiff against every other method for each of BOOTSTRAP_SETS: the hierarchical bootstrap
    (core/evaluation/hierarchical.py: every method's seeds resampled on its own, the test cases shared by
    both methods of a pair) of the difference in macro AUROC averaged over the set's conditions, from the
    per-case probabilities the harness keeps; Holm across the methods, the verdict from the adjusted p.
    Each row also has both methods' mean AUROC and `seeds_resampled` (False with one seed per method: the
    interval covers test cases only)."""
    from core.evaluation.bootstrap import macro_auroc_stack
    from core.evaluation.hierarchical import compare

    methods = list(dict.fromkeys(m for m, _ in probs))
    out: dict[str, list[dict]] = {}
    for key in BOOTSTRAP_SETS:
        conds = bootstrap_conditions(key, names)
        if any(c not in where for c in conds) or REFERENCE not in methods:
            continue
        y = labels[where[conds[0]]]
        stacked = {m: np.stack([np.stack([probs[(m, s)][c] for c in conds]) for s in seeds]) for m in methods
                   if all((m, s) in probs for s in seeds)}  # (seeds, conditions, cases, classes)
        if REFERENCE not in stacked or len(stacked) < 2:
            continue
        if any(not np.array_equal(where[c], where[conds[0]]) for c in conds):
            raise ValueError(f"the conditions of {key} score different cases; they cannot be stacked")
        rows = compare(y, stacked, REFERENCE, n_resamples=n_resamples)
        def mean_auroc(m: str) -> float:
            return float(macro_auroc_stack(y, stacked[m].reshape(-1, *stacked[m].shape[2:])).mean())

        ours = mean_auroc(REFERENCE)
        for row in rows:
            row.update(auroc=mean_auroc(row["method"]), auroc_reference=ours)
        out[key] = rows
    return out


READING = {"better": "RobustMDiff better", "worse": "RobustMDiff worse", "no clear difference": "no clear difference"}
# the one verdict rule of every bootstrap table, in words (the page's help and the markdown say it beside the table)
BOOTSTRAP_RULE = ("Hierarchical bootstrap: each of 2000 resamples draws every method's training seeds with replacement "
                  "and the test cases with replacement (the same cases for both methods of a pair), so the interval "
                  "includes training variance; with one seed per method, and in result files made before it (no "
                  "'seeds_resampled' in them), only the test cases are resampled. 'Better' or 'worse' only where the "
                  "Holm-adjusted p (across the compared methods) is below 0.05; the interval beside it is adjusted "
                  "the same way, so it excludes zero exactly where the reading says better or worse (≈: approximated "
                  "from a 95 % interval, for result files made before the adjusted interval was stored).")


def seeds_resampled(rows: list[dict]) -> bool:
    """Whether these comparisons resampled training seeds (older files and one-seed runs did not)."""
    return bool(rows) and all(r.get("seeds_resampled", False) for r in rows)


def bootstrap_kind(rows: list[dict]) -> str:
    """The bootstrap behind these rows, in words."""
    return ("hierarchical bootstrap over training seeds and test cases" if seeds_resampled(rows)
            else "paired bootstrap over test cases only")


def bootstrap_caption(rows: list[dict]) -> str:
    """The caption of one bootstrap table: what its intervals resampled, then the verdict rule."""
    if seeds_resampled(rows):
        head = (f"Intervals from a {bootstrap_kind(rows)} ({rows[0].get('n_resamples', 2000)} resamples; the "
                "seeds of each method resampled on its own, the same resampled cases for both methods of a pair): "
                "they include training variance.")
    elif rows and "seeds_resampled" in rows[0]:
        head = ("One seed per method: the interval covers test cases only (the paired bootstrap over cases), not "
                "training variance; run more seeds for intervals that include it.")
    else:
        head = ("Made before the hierarchical bootstrap: the interval covers test cases only (seeds stacked, not "
                "resampled), not training variance.")
    return head + " 'Better' or 'worse' only where the Holm-adjusted p (across the compared methods) is below " \
        "0.05; the interval beside it is adjusted the same way, so it excludes zero exactly where the reading " \
        "says better or worse (≈: approximated from a 95 % interval, for result files made before the adjusted " \
        "interval was stored)."


def p_value(p: float) -> str:
    """A bootstrap p-value as read: its resolution is 1/resamples, so below 0.001 it is '< 0.001', not 0."""
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def holm_interval(row: dict, step: int, alpha: float = 0.05) -> tuple[float, float, bool]:
    """The comparison's interval at the level of its Holm-adjusted test: stored by `bootstrap.compare`, or, for
    rows saved before it stored one, a normal approximation from the 95 % percentile interval (third value
    True). `step`: the row's Holm factor m - i + 1 (used where p is 0)."""
    from scipy.stats import norm

    from core.evaluation.bootstrap import adjusted_level

    if "low_holm" in row:
        return row["low_holm"], row["high_holm"], False
    se = (row["high"] - row["low"]) / (2 * norm.ppf(0.975))
    half = norm.ppf(1 - adjusted_level(row["p"], row["p_holm"], step, alpha) / 2) * se
    return row["difference"] - half, row["difference"] + half, True


def holm_steps(ps: list[float]) -> list[int]:
    """Each p's Holm factor m - i + 1 (i: its rank, smallest first)."""
    order = np.argsort(ps, kind="stable")
    steps = [0] * len(ps)
    for k, i in enumerate(order):
        steps[i] = len(ps) - k
    return steps


def bootstrap_frame(rows: list[dict]) -> pd.DataFrame:
    """The comparisons as read, one verdict rule (BOOTSTRAP_RULE): the difference in AUROC points, its interval
    adjusted for the number of methods (Holm) and the Holm-adjusted p beside the reading."""
    steps = holm_steps([r["p"] for r in rows])
    out = []
    for r, step in sorted(zip(rows, steps), key=lambda rs: -rs[0]["difference"]):
        low, high, approximate = holm_interval(r, step)
        out.append({"method": display_name(r["method"]), "difference (AUROC points)": f"{100 * r['difference']:+.2f}",
                    "interval (Holm)": ("≈" if approximate else "") + f"[{100 * low:+.2f}, {100 * high:+.2f}]",
                    "p (Holm)": p_value(r["p_holm"]), "reading": READING[r["direction"]]})
    return pd.DataFrame(out)


