"""Synthesis confidence: the probability that the answer does not change when the real modality is added.

Learned on validation views (`views.py`): for each case and each subset S of its present modalities
without modality i, the label is whether the answer from S equals the answer from S ∪ {i}. A logistic
regression per modality reads the signals of `RobustMDiff.synthesis_signals` (latent spread of the K
samples, expected change and information gain of that modality, disagreement of the K per-sample
answers, margin and entropy of the averaged answer, which modalities were given). Its inputs are
clipped to the range seen on validation, so it cannot extrapolate to 0 or 1 beyond what it saw.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from core.calibration.views import Views
from core.model.robustmdiff import RobustMDiff

MIN_VIEWS = 30
CLIP_PERCENTILES = (0.5, 99.5)


def confidence_data(views: Views, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Signals (n, F) of the views missing modality i, and whether adding it left the answer unchanged."""
    src, ref = views.pairs(i)
    answer = views.answer()
    return views.out.signals[src, i], (answer[src] == answer[ref]).astype(float)


def fit_confidence(model: RobustMDiff, views: Views) -> dict:
    """Fit the confidence model of every modality (buffers on `model`); returns per modality n and base rate."""
    report = {}
    for i, name in enumerate(model.info.names):
        x, y = confidence_data(views, i)
        if len(y) < MIN_VIEWS or y.min() == y.max():
            rate = float(np.clip(y.mean(), 0.02, 0.98)) if len(y) else 0.5
            model.conf_w[i].zero_()
            model.conf_b[i].fill_(float(np.log(rate / (1 - rate))))
            report[name] = {"n": int(len(y)), "unchanged_rate": float(y.mean()) if len(y) else None,
                            "model": "constant (too few or one-sided validation views)"}
            continue
        lo, hi = np.percentile(x, CLIP_PERCENTILES, axis=0)
        xc = np.clip(x, lo, hi)
        mean, std = xc.mean(0), xc.std(0)
        std = np.where(std > 1e-8, std, 1.0)
        lr = LogisticRegression(C=1.0, max_iter=2000).fit((xc - mean) / std, y)
        for buf, v in ((model.conf_lo, lo), (model.conf_hi, hi), (model.conf_mean, mean), (model.conf_std, std),
                       (model.conf_w, lr.coef_[0])):
            buf[i].copy_(torch.as_tensor(v, dtype=torch.float32))
        model.conf_b[i].fill_(float(lr.intercept_[0]))
        report[name] = {"n": int(len(y)), "unchanged_rate": float(y.mean()), "model": "logistic regression"}
    return report
