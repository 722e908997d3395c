"""Aggregate evaluation rows into the papers' tables, significance tests and target checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

from core.evaluation.harness import RANDOM_RATES, pattern_label
from core.evaluation.patterns import availability_patterns, pattern_name
from core.names import display_name

REFERENCE = "robustmdiff"
# what the tables' metrics are, in plain words (shown as column headers), and their definition (tooltips)
METRIC_WORDS = {"auroc": "telling diagnoses apart (AUROC)", "accuracy": "accuracy"}
METRIC_HELP = {
    "auroc": "Macro AUROC: for each diagnosis, the chance that a case with it gets a higher probability of it than a "
             "case without it (0.5 = guessing, 1 = perfect), averaged over the diagnoses. In %.",
    "accuracy": "Share of cases whose most probable diagnosis is the true one. In %.",
}


def pattern_columns(names: list[str]) -> list[str]:
    """Availability subsets in the CMML order: single modalities, pairs, ..., all."""
    return [pattern_name(p, names) for p in sorted(availability_patterns(len(names)), key=lambda p: (sum(p), [not x for x in p]))]


def summary(rows: list[dict]) -> pd.DataFrame:
    """Mean and std over seeds of every metric, per method, condition and group."""
    df = pd.DataFrame(rows)
    metrics = [c for c in df.columns if c not in ("method", "seed", "condition", "group", "n")]
    g = df.groupby(["method", "condition", "group"], sort=False)[metrics]
    return g.mean().join(g.std(ddof=0).add_suffix("_std")).reset_index()


def averages(rows: list[dict], names: list[str], metric: str = "auroc", group: str = "all") -> pd.DataFrame:
    """Per method and seed, the metric averaged over the availability patterns (the AVG column)."""
    df = pd.DataFrame(rows)
    df = df[(df.group == group) & df.condition.isin(pattern_columns(names))]
    return df.groupby(["method", "seed"])[metric].mean().reset_index()


# the Wilcoxon column, in words: optimistic, and nothing (verdict, star, target) is decided from it (issue 28)
WILCOXON_NOTE = ("p (Wilcoxon, optimistic): Wilcoxon signed-rank test of RobustMDiff against the method over "
                 "patterns × seeds, Holm-adjusted across the methods; it treats patterns × seeds as independent "
                 "(they share the same test cases), so its p-values are optimistic: not a verdict. The verdicts come "
                 "from the bootstrap tables below.")


def significance(rows: list[dict], names: list[str], metric: str = "auroc") -> dict[str, dict]:
    """Wilcoxon signed-rank test of RobustMDiff against each method, paired over patterns × seeds; `p_holm`:
    its p adjusted across the methods (Holm). Optimistic (WILCOXON_NOTE): it treats patterns × seeds as
    independent though they share the test cases, so no verdict, star or target is decided from it; the
    hierarchical bootstrap (`bootstraps`) decides them."""
    from core.review.stats import holm

    df = pd.DataFrame(rows)
    df = df[(df.group == "all") & df.condition.isin(pattern_columns(names))]
    ref = df[df.method == REFERENCE].set_index(["condition", "seed"])[metric]
    out = {}
    for method in df.method.unique():
        if method == REFERENCE:
            continue
        other = df[df.method == method].set_index(["condition", "seed"])[metric]
        a, b = ref.align(other, join="inner")
        diff = (a - b).to_numpy()
        p = float(wilcoxon(a, b).pvalue) if len(a) >= 2 and np.any(diff != 0) else 1.0
        out[method] = {"n_pairs": int(len(a)), "mean_difference": float(diff.mean()) if len(diff) else 0.0,
                       "wins": int((diff > 0).sum()), "p_value": p}
    for v, adjusted in zip(out.values(), holm([v["p_value"] for v in out.values()])):
        v["p_holm"] = float(adjusted)
    return out


def _cell(mean: float, std: float) -> str:
    return "–" if np.isnan(mean) else f"{100 * mean:.2f} ± {100 * (0 if np.isnan(std) else std):.2f}"


def main_table(rows: list[dict], names: list[str], metric: str = "auroc") -> str:
    """Methods as rows, availability patterns as columns (ACC and the metric), AVG last (CMML Table 2).
    The best mean of each column is in bold; p is the Wilcoxon test's, Holm-adjusted across the methods and
    optimistic (WILCOXON_NOTE). No verdict is marked here: the hierarchical bootstrap gives it
    (`bootstrap_frame`), so that one method is never 'better' in one table and 'no clear difference' in the next."""
    s = summary(rows)
    s = s[s.group == "all"]
    cols = pattern_columns(names)
    sig = significance(rows, names, metric)
    avg_m = averages(rows, names, metric).groupby("method")[metric].agg(["mean", "std"])
    avg_a = averages(rows, names, "accuracy").groupby("method")["accuracy"].agg(["mean", "std"])
    best = s.groupby("condition")[["accuracy", metric]].max()

    def cell(mean: float, std: float, top: float) -> str:
        text = _cell(mean, std)
        return f"**{text}**" if np.isclose(mean, top) else text

    head = ("| Method | " + " | ".join(f"{c} ACC | {c} {metric.upper()}" for c in cols)
            + f" | AVG ACC | AVG {metric.upper()} | p (Wilcoxon, optimistic) |")
    lines = [head, "|" + "---|" * (2 * len(cols) + 4)]
    for method in s.method.unique():
        sub = s[s.method == method].set_index("condition")
        cells = []
        for c in cols:
            r = sub.loc[c]
            cells += [cell(r["accuracy"], r["accuracy_std"], best.at[c, "accuracy"]),
                      cell(r[metric], r[f"{metric}_std"], best.at[c, metric])]
        p = f"{sig[method]['p_holm']:.3g}" if method in sig else "ref."
        lines.append(f"| {display_name(method)} | " + " | ".join(cells)
                     + f" | {cell(avg_a.loc[method, 'mean'], avg_a.loc[method, 'std'], avg_a['mean'].max())}"
                     + f" | {cell(avg_m.loc[method, 'mean'], avg_m.loc[method, 'std'], avg_m['mean'].max())} | {p} |")
    return "\n".join(lines)


def retention(rows: list[dict], names: list[str], metric: str = "auroc") -> pd.DataFrame:
    """Share of the all-modalities metric kept: worst and mean with one missing, mean with two missing,
    and under random missingness (30 %, 50 %)."""
    s = summary(rows)
    s = s[s.group == "all"].set_index(["method", "condition"])[metric]
    full = pattern_name((True,) * len(names), names)
    by_missing: dict[int, list[str]] = {}
    for p in availability_patterns(len(names)):
        by_missing.setdefault(len(names) - sum(p), []).append(pattern_name(p, names))
    out = []
    for method in s.index.get_level_values(0).unique():
        f = s[(method, full)]
        row = {"method": method, f"{metric}_all_present": f}
        for k, pats in sorted(by_missing.items()):
            if k == 0:
                continue
            vals = [s[(method, p)] / f for p in pats]
            row[f"{k}_missing_mean"] = float(np.mean(vals))
            row[f"{k}_missing_worst"] = float(np.min(vals))
        for rate in RANDOM_RATES:
            row[f"random_{int(rate * 100)}"] = float(s[(method, f"random_{int(rate * 100)}")] / f)
        out.append(row)
    return pd.DataFrame(out)


def rare_table(rows: list[dict], intervals: dict[str, dict] | None = None) -> pd.DataFrame:
    """Rare vs common classes under natural missingness: AUROC and recall, mean over seeds. With `intervals`
    (`rare_intervals`, kept in results.json), two more columns: the 95 % hierarchical-bootstrap interval of the
    rare AUROC and recall (seeds and cases resampled; cases only with one seed). Without, the five columns
    of result files made before them."""
    s = summary(rows)
    s = s[s.condition == "natural"]
    out = []
    for method in s.method.unique():
        sub = s[s.method == method].set_index("group")
        if "rare" not in sub.index:
            continue
        row = {"method": display_name(method), "rare AUROC": sub.loc["rare", "auroc"],
               "rare recall": sub.loc["rare", "recall"], "common AUROC": sub.loc["common", "auroc"],
               "common recall": sub.loc["common", "recall"]}
        if intervals is not None:
            mine = intervals.get(method, {})
            row |= {f"rare {words} 95 % interval": _interval_text(mine.get(key)) for key, words in
                    (("auroc", "AUROC"), ("recall", "recall"))}
        out.append(row)
    return pd.DataFrame(out)


def _interval_text(found: dict | None) -> str:
    return "–" if not found or not np.isfinite(found["low"]) else f"[{found['low']:.3f}, {found['high']:.3f}]"


RARE_MEASURES = ("auroc", "recall", "accuracy")


def rare_intervals(probs: dict[tuple[str, int], dict[str, np.ndarray]], where: dict[str, np.ndarray],
                   labels: np.ndarray, seeds: list[int], rare: list[int] | None,
                   n_resamples: int = 2000) -> dict[str, dict]:
    """Each method's rare-class AUROC, recall and accuracy under natural missingness, with a 95 % interval of
    the hierarchical bootstrap (core/evaluation/hierarchical.py: seeds and test cases resampled; cases only
    where a method has one seed). {} without rare classes or natural probabilities."""
    from core.evaluation.bootstrap import accuracy_stack, macro_auroc_stack, macro_recall_stack
    from core.evaluation.hierarchical import intervals

    if not rare or "natural" not in where:
        return {}
    y = labels[where["natural"]]
    statistics = {k: lambda yy, pp, f=f: f(yy, pp, rare)  # each restricted to the rare classes
                  for k, f in zip(RARE_MEASURES, (macro_auroc_stack, macro_recall_stack, accuracy_stack))}
    out: dict[str, dict] = {}
    for method in dict.fromkeys(m for m, _ in probs):
        if not all((method, s) in probs for s in seeds):
            continue
        stack = np.stack([probs[(method, s)]["natural"] for s in seeds])
        out[method] = intervals(y, stack, statistics, n_resamples)
    return out


def comparison(rows: list[dict], names: list[str], metric: str = "auroc") -> tuple[pd.DataFrame, dict[str, str]]:
    """The main table for a screen, and a definition of each column (for tooltips): one metric, methods as
    rows in table order, the mean over seeds (%) under every availability pattern and its average over the
    patterns, and the test against RobustMDiff; every name in words. Where `main_table` (both metrics, ±
    std in every cell: 18 columns) needs scrolling sideways on a laptop screen, this fits at 1440 px."""
    s = summary(rows)
    s = s[s.group == "all"]
    cols = pattern_columns(names)
    heads = {c: pattern_label(c).replace(" + ", "+") for c in cols}
    if len(cols) > 1:  # one modality: its name says more than "all"
        heads[cols[-1]] = "All modalities"
    sig = significance(rows, names, metric)
    avg = averages(rows, names, metric).groupby("method")[metric].mean()
    out = []
    for method in s.method.unique():
        sub = s[s.method == method].set_index("condition")
        p = sig[method]["p_holm"] if method in sig else None
        out.append({"Method": display_name(method), **{heads[c]: 100 * sub.at[c, metric] for c in cols},
                    "AVG": 100 * avg[method], "p (Holm)": "ref." if p is None else _p_text(p)})
    what = METRIC_HELP[metric]
    helps = {heads[c]: f"{what} Only {pattern_label(c)} given: the complete test cases with the other modalities "
                       "switched off; mean over the training seeds (± std: in the downloadable table)." for c in cols}
    helps.update({"Method": "How missing modalities are handled (core/evaluation/methods.py).",
                  "AVG": f"{what} Mean over the {len(cols)} combinations of modalities (AVG, as the papers call it).",
                  "p (Holm)": "Optimistic, not a verdict: the p-value of a two-sided Wilcoxon signed-rank test of "
                              "RobustMDiff (ref.) against this method, paired over combinations × seeds, adjusted for "
                              "comparing several methods (Holm). It treats combinations × seeds as independent though "
                              "they share the same test cases, so it is too small. 'Better' or 'no clear difference' "
                              "comes from one test only, the hierarchical bootstrap over training seeds and test "
                              "cases (the table above)."})
    return pd.DataFrame(out), helps


def _p_text(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.2g}"


def retention_view(rows: list[dict], names: list[str]) -> tuple[pd.DataFrame, dict[str, str]]:
    """`retention` for a screen: words for the methods and columns, in %, and a definition per column."""
    ret = retention(rows, names)
    heads = {"method": "Method", "auroc_all_present": "All given"}
    helps = {"All given": METRIC_HELP["auroc"] + " With every modality given: what the other columns are a share of."}
    for k in range(1, len(names)):
        for kind in ("mean", "worst"):
            head = f"{k} missing, {kind}"
            heads[f"{k}_missing_{kind}"] = head
            helps[head] = (f"Share of the all-given AUROC kept with {k} modalit{'y' if k == 1 else 'ies'} switched off, "
                           f"{'averaged over' if kind == 'mean' else 'the worst of'} the ways to choose {k}. In %.")
    for rate in RANDOM_RATES:
        head = f"Random {int(rate * 100)} %"
        heads[f"random_{int(rate * 100)}"] = head
        helps[head] = (f"Share of the all-given AUROC kept when each modality is switched off with probability "
                       f"{rate:.0%} (at least one kept per case). In %.")
    ret = ret.rename(columns=heads)
    ret["Method"] = ret["Method"].map(display_name)
    numeric = [c for c in ret.columns if c != "Method"]
    ret[numeric] = 100 * ret[numeric]
    return ret, helps


def targets(rows: list[dict], names: list[str], bootstraps: dict[str, list[dict]] | None = None,
            config: dict | None = None) -> list[dict]:
    """The project's targets, measured. 'p < 0.05 against every other method' is read from the bootstrap
    comparisons (`bootstraps`, the result file's: hierarchical over seeds and cases, or cases only in files
    made before it), Holm-adjusted; without them it is left out (never from the optimistic Wilcoxon test).
    `config`: the evaluation's base configuration, which says when 'w/o rare-disease sampling' would be the
    model itself (rare classes weighted like the others) and so was not trained."""
    avg = averages(rows, names).groupby("method")["auroc"].mean()
    ret = retention(rows, names).set_index("method")
    s = summary(rows)
    nat = s[(s.condition == "natural") & (s.group == "rare")].set_index("method")["recall"]
    if len(avg) < 2:  # one method: nothing to compare against, so no comparative target applies
        out: list[dict] = []
    else:
        out = [{"target": "best AVG AUROC of all methods",
                "measured": f"{display_name(avg.idxmax())} ({avg.max():.4f}); RobustMDiff {avg.get(REFERENCE, np.nan):.4f}",
                "met": bool(avg.get(REFERENCE, -np.inf) >= avg.max())}]  # a tie for first counts
        out += _significance_target(bootstraps or {})
    if REFERENCE in ret.index:
        r = ret.loc[REFERENCE]
        if "1_missing_worst" in r:
            out.append({"target": ">= 97 % of full AUROC with any one modality missing",
                        "measured": f"worst {r['1_missing_worst']:.1%}, mean {r['1_missing_mean']:.1%}",
                        "met": bool(r["1_missing_worst"] >= 0.97)})
        if "2_missing_mean" in r:
            out.append({"target": ">= 90 % of full AUROC with two of three missing",
                        "measured": f"worst {r['2_missing_worst']:.1%}, mean {r['2_missing_mean']:.1%}",
                        "met": bool(r["2_missing_worst"] >= 0.90)})
    if REFERENCE in ret.index and "random_50" in ret.columns:  # the design's robustness target, as written
        kept = float(ret.loc[REFERENCE, "random_50"])
        out.append({"target": "design: >= 85–90 % of full performance with up to 50 % of modalities missing",
                    "measured": f"{kept:.1%} of the all-given AUROC kept with each modality missing at random at 50 %",
                    "met": bool(kept >= 0.85)})
    out += _rare_against_comparisons(s)
    if REFERENCE in nat.index and "no_rare_sampling" in nat.index:
        ours, theirs = float(nat[REFERENCE]), float(nat["no_rare_sampling"])
        out.append({"target": "rare-class recall >= 15 % higher than without rare-disease sampling",
                    "measured": f"{ours:.3f} vs {theirs:.3f} ({relative_change(ours, theirs)})",
                    "met": gain_met(ours, theirs, 0.15)})
    elif REFERENCE in nat.index and config and rare_sampling_is_off(config):
        gamma = config["training"]["rare_gamma"]
        out.append({"target": "rare-class recall >= 15 % higher than without rare-disease sampling",
                    "measured": f"no difference by construction: the class weights chosen on validation give rare classes "
                                f"the weight of the others (rare_gamma = balance_gamma = {gamma}), so the model without "
                                "rare-disease sampling is this one (not trained separately)", "met": False})
    return out


def rare_sampling_is_off(config: dict) -> bool:
    """Rare classes get no weight of their own: 'w/o rare-disease sampling' would train the same model."""
    t = config.get("training", {})
    return t.get("rare_gamma") is not None and t.get("rare_gamma") == t.get("balance_gamma")


def _significance_target(bootstraps: dict[str, list[dict]]) -> list[dict]:
    """'p < 0.05 against every other method' from the bootstrap comparison of the pattern average (the main
    table's AVG; else the first set there is): the Holm-adjusted p of each comparison, 'better' counted."""
    from core.evaluation.verdicts import BOOTSTRAP_SETS, bootstrap_kind  # it reads this module's tables

    key = "patterns" if bootstraps.get("patterns") else next((k for k, v in bootstraps.items() if v), None)
    if key is None:
        return []
    rows = bootstraps[key]
    better = [r for r in rows if r.get("direction") == "better"]
    return [{"target": f"p < 0.05 against every other method ({bootstrap_kind(rows)}, Holm-adjusted)",
             "measured": f"{len(better)} of {len(rows)} significantly better ({BOOTSTRAP_SETS.get(key, key)})",
             "met": len(better) == len(rows)}]


def relative_change(ours: float, theirs: float) -> str:
    """`ours` against `theirs` in words: a percentage of `theirs`, or, where `theirs` is 0 (a quick run whose
    models never name a rare class), the absolute difference, since a percentage of zero means nothing."""
    if theirs > 0:
        return f"{ours / theirs - 1:+.1%}"
    return f"{ours - theirs:+.3f} absolute; no % change from zero"


def gain_met(ours: float, theirs: float, share: float) -> bool:
    """Whether `ours` is at least `share` above `theirs` (from zero: any gain counts, none does not)."""
    return bool(ours / theirs - 1 >= share) if theirs > 0 else bool(ours > 0)


def _rare_against_comparisons(s: pd.DataFrame) -> list[dict]:
    """The design's rare-disease target as written: RobustMDiff's accuracy and recall on the rare classes
    (natural missingness) 15–20 % above the best comparison method (the baselines of the seeds, not
    single-modality models or RobustMDiff's own ablations), each measure against its own best."""
    from core.evaluation.methods import methods_for

    baselines = {m.name for m in methods_for([]) if m.kind == "baseline"}
    rare = s[(s.condition == "natural") & (s.group == "rare")].set_index("method")
    compared = rare[rare.index.isin(baselines)]
    if REFERENCE not in rare.index or compared.empty:
        return []
    out = []
    for measure in ("accuracy", "recall"):
        best = compared[measure].idxmax()
        ours, theirs = float(rare.loc[REFERENCE, measure]), float(compared.loc[best, measure])
        out.append({"target": f"design: rare-disease {measure} >= 15–20 % above the best comparison method",
                    "measured": f"{ours:.3f} vs {theirs:.3f} ({display_name(best)}), {relative_change(ours, theirs)}",
                    "met": gain_met(ours, theirs, 0.15)})
    return out


def targets_frame(targets: list[dict]) -> pd.DataFrame:
    """Targets as read: 'met' / 'not met' in words rather than booleans (which a page draws as checkboxes)."""
    df = pd.DataFrame(targets, columns=["target", "measured", "met"])
    df["target"] = df["target"].str.replace(">=", "≥").str.replace("<=", "≤")  # a leading ">" reads as a quote
    df["met"] = df["met"].map(lambda m: "met" if m else "not met")
    return df
