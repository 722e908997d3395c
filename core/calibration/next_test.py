"""'Which test next': which ranking of the missing modalities to trust, chosen on validation, measured on test.

For a view missing two or more modalities whose real values are known (a complete case seen through a subset
of its modalities), the target is the modality whose real value moves the probabilities most (total
variation between the view and the same case's view with that modality added). Each rule of
`core.inference.NEXT_TEST_RULES` ranks the missing modalities by a score the prediction already has; its
top-1 agreement is the share of views where it ranks the target first. The rule with the best agreement
on VALIDATION views is chosen; on TEST views every rule's agreement gets a bootstrap 95 % interval that
resamples cases (the views of one case share its inputs, so they are not independent), and the chosen
rule is said to beat chance only where its interval's lower bound is above the chance level.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import spearmanr

from core.calibration.views import Views
from core.inference import TableOutput
from core.prediction import NEXT_TEST_RULES
from core.model.robustmdiff import RobustMDiff

BOOTSTRAP = 2000
INTERVAL_METHOD = f"bootstrap 95 % percentile interval, {BOOTSTRAP} resamples of test cases (all views of a case together)"


def rule_scores(out: TableOutput, confidence: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Each rule's score (n, M) for every view and modality (NaN where given). `confidence`: the synthesis
    confidence to use instead of `out.confidence` (validation views predicted before the confidence was fitted)."""
    conf = out.confidence if confidence is None else confidence
    return {"probability_of_change": 1 - conf, "expected_change": out.expected_change,
            "information_gain": out.info_gain, "decision_change": out.decision_change}


def refitted_confidence(model: RobustMDiff, out: TableOutput) -> np.ndarray:
    """The confidence the model now gives to views predicted earlier, from their stored signals (no new pass)."""
    signals = torch.as_tensor(out.signals, dtype=torch.float32, device=model.conf_w.device)
    return model.confidence(signals).cpu().numpy()


def candidates(views: Views) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views with two or more missing modalities whose real value is known: their index (n,), which modalities
    are candidates (n, M), and the change each one's real value makes (n, M; NaN where no candidate)."""
    n_mod = views.given.shape[1]
    actual = np.full((len(views.rows), n_mod), np.nan)
    for i in range(n_mod):
        src, ref = views.pairs(i)
        if len(src):
            actual[src, i] = 0.5 * np.abs(views.out.probs[src] - views.out.probs[ref]).sum(1)
    mask = np.isfinite(actual)
    keep = np.flatnonzero(mask.sum(1) >= 2)
    return keep, mask[keep], actual[keep]


def top1_hits(score: np.ndarray, actual: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per view (n,): 1 where the candidate a score ranks first is the one whose real value moves the answer
    most; where several tie for first (a share of samples is often 0 for all), 1 / ties if it is among them,
    the expected hit of breaking the tie at random, so that a tie never scores by the order of the modalities."""
    s = np.where(mask, np.nan_to_num(score, nan=-np.inf), -np.inf)
    first = mask & (s == s.max(1, keepdims=True))
    target = np.where(mask, actual, -np.inf).argmax(1)
    return first[np.arange(len(s)), target] / first.sum(1)


def grouped_interval(hits: np.ndarray, groups: np.ndarray, n_boot: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of the mean of `hits`, resampling whole groups (cases) with replacement."""
    _, g = np.unique(groups, return_inverse=True)
    sums, counts = np.bincount(g, weights=hits), np.bincount(g).astype(float)
    draw = np.random.default_rng(seed).integers(0, len(sums), (n_boot, len(sums)))
    means = sums[draw].sum(1) / counts[draw].sum(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def agreement(views: Views, scores: dict[str, np.ndarray] | None = None) -> dict:
    """Top-1 agreement of every rule on these views: n_views, chance (mean of 1 / candidates), and per rule the
    agreement, its hits per view and the Spearman correlation of score with actual change over candidates."""
    keep, mask, actual = candidates(views)
    scores = rule_scores(views.out) if scores is None else scores
    if not len(keep):
        return {"n_views": 0}
    rules = {}
    for rule in NEXT_TEST_RULES:
        s = scores[rule][keep]
        hits = top1_hits(s, actual, mask)
        varies = np.ptp(s[mask]) > 0 and np.ptp(actual[mask]) > 0  # a constant score has no rank correlation
        rules[rule] = {"agreement": float(hits.mean()), "hits": hits,
                       "spearman": float(spearmanr(s[mask], actual[mask]).statistic) if varies else float("nan")}
    return {"n_views": int(len(keep)), "chance": float((1 / mask.sum(1)).mean()), "groups": views.rows[keep],
            "rules": rules}


def choose_rule(validation: dict[str, float]) -> str:
    """The rule with the best validation agreement (ties: the first in NEXT_TEST_RULES' order)."""
    return max(NEXT_TEST_RULES, key=lambda r: (validation.get(r, -1.0), -list(NEXT_TEST_RULES).index(r)))


def validation_summary(views: Views, scores: dict[str, np.ndarray] | None = None) -> dict:
    """What the choice reads, JSON-ready (stored with the calibration fit)."""
    a = agreement(views, scores)
    if not a["n_views"]:
        return {"n_views": 0}
    return {"n_views": a["n_views"], "top1_chance": a["chance"],
            "top1_agreement": {r: v["agreement"] for r, v in a["rules"].items()}}


def next_test_report(validation: dict, test_views: Views) -> dict:
    """The calibration report's `next_test`: the rule chosen on `validation` (`validation_summary`), every rule's
    test agreement with its interval, and whether the chosen one beat chance. The flat keys of earlier reports
    (top1_agreement_<rule>, spearman_<rule>_vs_actual_change) are kept for the pages that read them."""
    t = agreement(test_views)
    if not t["n_views"]:
        return {"n_views": 0}
    out = {"n_views": t["n_views"], "top1_chance": t["chance"], "n_cases": int(len(np.unique(t["groups"]))),
           **{f"top1_agreement_{r}": v["agreement"] for r, v in t["rules"].items()},
           **{f"spearman_{r}_vs_actual_change": v["spearman"] for r, v in t["rules"].items()},
           "test": {r: {"agreement": v["agreement"], "interval": list(grouped_interval(v["hits"], t["groups"]))}
                    for r, v in t["rules"].items()},
           "interval_method": INTERVAL_METHOD, "validation": validation}
    if validation.get("n_views"):
        rule = choose_rule(validation["top1_agreement"])
        out.update(chosen_rule=rule, chosen_on="validation top-1 agreement",
                   above_chance=bool(out["test"][rule]["interval"][0] > t["chance"]))
    return out


def summary_line(nt: dict) -> str:
    """The report's sentence (calibration.md)."""
    if not nt.get("n_views"):
        return ""
    rules = "; ".join(f"{r} {v['agreement']:.3f} [{v['interval'][0]:.3f}, {v['interval'][1]:.3f}]"
                      + (f" (validation {nt['validation']['top1_agreement'][r]:.3f})" if nt.get("validation", {}).get("n_views") else "")
                      for r, v in nt["test"].items())
    chosen = (f" Chosen on validation ({nt['validation']['n_views']} views): {nt['chosen_rule']}; its test interval's lower "
              f"bound is {'above' if nt['above_chance'] else 'not above'} chance." if "chosen_rule" in nt
              else " No validation views: no rule chosen.")
    return (f"Which test next ({nt['n_views']} test views of {nt['n_cases']} cases missing two or more modalities; chance "
            f"{nt['top1_chance']:.3f}): top-1 agreement with the modality whose real value changes the answer most, "
            f"test [{INTERVAL_METHOD}]: {rules}.{chosen}")
