"""Post-training calibration on validation data.

- Temperature scaling: one scalar T divides the logits so that class probabilities are calibrated (the
  T minimising the validation negative log-likelihood, under the missingness the model will meet).
- Synthesis confidence: for validation cases, each present modality is hidden and synthesized; the
  spread of the K samples is related (isotonic regression, decreasing) to whether the answer given with
  the synthesized latent equals the answer given with the real one. A confidence of 0.8 therefore
  means: among validation cases whose samples disagreed this much, 80 % got the same answer as with the
  real modality.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.isotonic import IsotonicRegression

from core.features import FeatureTable
from core.model.robustmdiff import CONFIDENCE_POINTS, RobustMDiff


@torch.no_grad()
def _logits(model: RobustMDiff, table: FeatureTable, idx: np.ndarray, drop: np.ndarray | None, device, seed: int):
    from core.inference import predict_table  # local: inference imports this module's users

    model.temperature.fill_(1.0)
    out = predict_table(model, table, idx, drop, seed=seed, device=device, value_of_information=False)
    return np.log(np.clip(out.probs, 1e-12, 1)), out


def fit_temperature(model: RobustMDiff, table: FeatureTable, idx: np.ndarray, y: np.ndarray, drops: list[np.ndarray],
                    device="cpu") -> float:
    """Grid search of T on the validation NLL, pooled over the given drop patterns."""
    lps = [_logits(model, table, idx, d, device, seed=1)[0] for d in drops]
    ys = np.concatenate([y] * len(drops))
    lp = np.concatenate(lps)
    best_t, best_nll = 1.0, np.inf
    for t in np.exp(np.linspace(np.log(0.3), np.log(5.0), 80)):
        z = lp / t
        z = z - z.max(1, keepdims=True)
        nll = -(z[np.arange(len(ys)), ys] - np.log(np.exp(z).sum(1))).mean()
        if nll < best_nll:
            best_t, best_nll = float(t), nll
    model.temperature.fill_(best_t)
    return best_t


@torch.no_grad()
def fit_latent_scale(model: RobustMDiff, table: FeatureTable, idx: np.ndarray, device="cpu") -> None:
    """The population spread of each modality's latent (mean over dimensions of its std across cases)."""
    batch = table.batch(idx, device)
    h, present = model.encode(batch)
    scale = []
    for i in range(h.shape[1]):
        hi = h[present[:, i], i]
        scale.append(float(hi.std(0).mean()) if len(hi) > 1 else 1.0)
    model.latent_scale.copy_(torch.tensor(scale))


def fit_confidence(model: RobustMDiff, table: FeatureTable, idx: np.ndarray, device="cpu", seed: int = 2) -> dict:
    """Isotonic map spread → P(same answer as with the real modality), per modality; returns its fit data."""
    m = len(model.info.modalities)
    t = float(model.temperature)
    reference = _logits(model, table, idx, None, device, seed)[0].argmax(1)
    rng = np.random.default_rng(seed)
    report = {}
    for i, (name, _) in enumerate(model.info.modalities):
        rows = idx[table.present[idx, i]]
        ref = reference[table.present[idx, i]]
        if len(rows) < 20 or model.denoiser is None:
            continue
        drop = np.zeros((len(rows), m), bool)
        drop[:, i] = True
        # sometimes hide another present modality too, as real cases lack several at once
        extra = rng.random((len(rows), m)) < 0.25
        extra[:, i] = False
        extra &= table.present[rows]
        still = (table.present[rows] & ~(drop | extra)).any(1)
        drop |= extra & still[:, None]
        _, out = _logits(model, table, rows, drop, device, seed)
        agree = (out.probs.argmax(1) == ref).astype(float)
        spread = out.spread[:, i]
        iso = IsotonicRegression(increasing=False, out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(spread, agree)
        xs = np.quantile(spread, np.linspace(0, 1, CONFIDENCE_POINTS))
        xs = np.maximum.accumulate(xs + np.arange(CONFIDENCE_POINTS) * 1e-9)
        model.confidence_x[i] = torch.as_tensor(xs, dtype=torch.float32)
        model.confidence_y[i] = torch.as_tensor(iso.predict(xs), dtype=torch.float32)
        report[name] = {"n": int(len(rows)), "agreement": float(agree.mean()),
                        "spread_agreement_spearman": float(_spearman(spread, agree))}
    model.temperature.fill_(t)
    return report


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    r = spearmanr(a, b).statistic
    return float(r) if np.isfinite(r) else 0.0
