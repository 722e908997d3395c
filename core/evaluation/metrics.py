"""Classification metrics for multi-class probabilities, macro-averaged one-vs-rest where that applies.

Classes with no positive case in the evaluated set are left out of macro averages (their AUROC is
undefined); `rare`/`common` restrict the averages to those classes.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score


def _classes_with_positives(y: np.ndarray, classes: list[int] | None, n: int) -> list[int]:
    cs = range(n) if classes is None else classes
    return [c for c in cs if 0 < (y == c).sum() < len(y)]


def macro_auroc(y: np.ndarray, proba: np.ndarray, classes: list[int] | None = None) -> float:
    cs = _classes_with_positives(y, classes, proba.shape[1])
    if not cs:
        return float("nan")
    return float(np.mean([roc_auc_score(y == c, proba[:, c]) for c in cs]))


def macro_auprc(y: np.ndarray, proba: np.ndarray, classes: list[int] | None = None) -> float:
    cs = _classes_with_positives(y, classes, proba.shape[1])
    if not cs:
        return float("nan")
    return float(np.mean([average_precision_score(y == c, proba[:, c]) for c in cs]))


def specificity(y: np.ndarray, pred: np.ndarray, classes: list[int]) -> float:
    vals = []
    for c in classes:
        neg = y != c
        if neg.any():
            vals.append(float((pred[neg] != c).mean()))
    return float(np.mean(vals)) if vals else float("nan")


def expected_calibration_error(y: np.ndarray, proba: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE with equal-width confidence bins."""
    conf = proba.max(1)
    correct = proba.argmax(1) == y
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def reliability_bins(p: np.ndarray, outcome: np.ndarray, bins: int = 10) -> list[dict]:
    """Equal-width bins of a predicted probability: count, mean prediction and observed frequency."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    return [{"low": float(edges[b]), "high": float(edges[b + 1]), "n": int((which == b).sum()),
             "mean_predicted": float(p[which == b].mean()), "observed": float(outcome[which == b].mean())}
            for b in range(bins) if (which == b).any()]


def binary_ece(p: np.ndarray, outcome: np.ndarray, bins: int = 10) -> float:
    """ECE of a probability for a binary outcome: bin-weighted |observed - predicted| over equal-width bins."""
    n = len(p)
    return float(sum(b["n"] / n * abs(b["observed"] - b["mean_predicted"]) for b in reliability_bins(p, outcome, bins)))


def ece_noise_floor(p: np.ndarray, bins: int, draws: int = 200, seed: int = 0) -> tuple[float, float]:
    """The ECE a perfectly calibrated predictor with these probabilities would show on this many cases
    (outcomes drawn as Bernoulli(p)): its mean and 95th percentile. A measured ECE within it is noise."""
    rng = np.random.default_rng(seed)
    sims = [binary_ece(p, (rng.random(len(p)) < p).astype(float), bins) for _ in range(draws)]
    return float(np.mean(sims)), float(np.quantile(sims, 0.95))


def brier(y: np.ndarray, proba: np.ndarray) -> float:
    """Multi-class Brier score: mean over cases of the squared distance to the one-hot label."""
    onehot = np.eye(proba.shape[1])[y]
    return float(((proba - onehot) ** 2).sum(1).mean())


def classification_metrics(y: np.ndarray, proba: np.ndarray, classes: list[int] | None = None) -> dict[str, float]:
    """AUROC, AUPRC, accuracy, F1, precision, recall (= sensitivity), specificity, ECE.

    With `classes`, one-vs-rest metrics are averaged over those classes only (e.g. the rare ones)."""
    pred = proba.argmax(1)
    cs = _classes_with_positives(y, classes, proba.shape[1]) if classes is not None else sorted(set(np.unique(y)))
    kw = dict(labels=cs, average="macro", zero_division=0)
    rec = float(recall_score(y, pred, **kw)) if cs else float("nan")
    sel = np.isin(y, cs)
    return {
        "auroc": macro_auroc(y, proba, classes),
        "auprc": macro_auprc(y, proba, classes),
        "accuracy": float((pred[sel] == y[sel]).mean()) if sel.any() else float("nan"),
        "f1": float(f1_score(y, pred, **kw)) if cs else float("nan"),
        "precision": float(precision_score(y, pred, **kw)) if cs else float("nan"),
        "recall": rec,
        "sensitivity": rec,
        "specificity": specificity(y, pred, cs),
        "ece": expected_calibration_error(y, proba),
    }
