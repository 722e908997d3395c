"""Temperature per availability pattern, optionally with a class-prior correction, fitted on what prediction
reports.

Prediction reports p = mean_k softmax(l_k / T_m + b) over the K diffusion samples, where T_m depends on
which modalities were given (a case read from its labs alone is less sure than a complete one) and b is
one bias per class (zero unless the form has one). Both are fitted by minimising the negative
log-likelihood of exactly that average on validation views (every validation case predicted from every
subset of its modalities), each case weighted equally; the pattern temperatures are shrunk towards their
common value, so a rare pattern cannot drift on a handful of cases. At the optimum of b the mean predicted
probability of each class equals its validation frequency (which would undo the prior shift of class
balancing), but with a few validation cases per rare class b fits those cases rather than the class.

The form (FORMS: a temperature per pattern or one for all, with or without the class bias) was chosen on
validation by cross-fitting (`core/evaluation/inference_choice.py`, `python -m core tune --inference`):
configs/default.yaml's `training.calibrator`; checkpoints from before the choice have pattern+bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from core.calibration.views import Views
from core.model.robustmdiff import RobustMDiff, pattern_index

SHRINK = 0.05  # weight of the penalty pulling each log T_m towards their mean
FORMS = ("pattern+bias", "pattern", "single+bias", "single")  # the first is the shipped form


@dataclass
class Fit:
    log_t: np.ndarray  # (patterns,) log temperature of every availability pattern
    bias: np.ndarray  # (classes,) class-prior bias, mean zero
    nll_before: float
    nll_after: float


def view_weights(rows: np.ndarray) -> np.ndarray:
    """Each case weighted equally, however many of its views there are."""
    _, inverse, counts = np.unique(rows, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inverse]
    return w / w.sum()


def calibrated(log_sample_probs: np.ndarray, patterns: np.ndarray, fit: Fit) -> np.ndarray:
    """(K, n, C) log-probabilities of the K samples at T = 1, b = 0 → the calibrated averaged probabilities (n, C)."""
    lp = torch.as_tensor(log_sample_probs, dtype=torch.float64)
    t = torch.as_tensor(np.exp(fit.log_t[patterns]), dtype=torch.float64).unsqueeze(-1)
    return torch.softmax(lp / t + torch.as_tensor(fit.bias), -1).mean(0).numpy()


def fit_form(log_sample_probs: np.ndarray, patterns: np.ndarray, labels: np.ndarray, weights: np.ndarray,
             n_patterns: int, form: str = FORMS[0], steps: int = 300) -> Fit:
    """Fit a calibrator of `form` (one of FORMS) to views: their K samples' log-probabilities at T = 1, b = 0
    (K, n, C; softmax ignores the per-sample constant, so they stand for the logits), availability pattern,
    label and weight."""
    if form not in FORMS:
        raise ValueError(f"unknown calibrator form {form!r} (one of {', '.join(FORMS)})")
    per_pattern, with_bias = form.startswith("pattern"), form.endswith("+bias")
    lp = torch.as_tensor(log_sample_probs, dtype=torch.float64)
    target = torch.as_tensor(labels)
    pattern = torch.as_tensor(patterns if per_pattern else np.zeros_like(patterns))
    weight = torch.as_tensor(weights, dtype=torch.float64)
    k = lp.shape[0]
    log_t = torch.zeros(n_patterns if per_pattern else 1, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(lp.shape[-1], dtype=torch.float64, requires_grad=with_bias)
    used = torch.zeros(log_t.numel(), dtype=torch.bool)
    used[pattern.unique()] = True

    def nll() -> torch.Tensor:
        t = log_t.exp()[pattern].unsqueeze(-1)
        mix = torch.logsumexp(torch.log_softmax(lp / t + b, -1), 0) - np.log(k)
        fit = -(weight * mix[torch.arange(len(target)), target]).sum()
        return fit + SHRINK * ((log_t[used] - log_t[used].mean()) ** 2).mean() + 1e-4 * (b ** 2).sum()

    with torch.no_grad():
        before = float(nll())
    opt = torch.optim.LBFGS([log_t, b] if with_bias else [log_t], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nll()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        after = float(nll())
    lt = log_t.detach().clone()
    lt[~used] = lt[used].mean()  # patterns validation never showed get the common temperature
    lt = lt.clamp(np.log(0.05), np.log(20.0)).numpy()
    bias = (b.detach() - b.detach().mean()).numpy()
    return Fit(np.full(n_patterns, lt[0]) if not per_pattern else lt, bias, before, after)


def reset(model: RobustMDiff) -> None:
    model.temperature.fill_(1.0)
    model.class_bias.zero_()


def fit_temperature(model: RobustMDiff, views: Views, labels: np.ndarray, form: str = FORMS[0]) -> dict:
    """Set model.temperature and model.class_bias from views predicted with T = 1, b = 0 (see `reset`);
    `labels` are the classes of the views' rows. Returns the fit."""
    patterns = pattern_index(torch.as_tensor(views.given)).numpy()
    fit = fit_form(np.log(np.clip(views.out.sample_probs, 1e-12, 1)), patterns, labels, view_weights(views.rows),
                   model.temperature.numel(), form)
    model.temperature.copy_(torch.as_tensor(np.exp(fit.log_t), dtype=torch.float32))
    model.class_bias.copy_(torch.as_tensor(fit.bias, dtype=torch.float32))
    names = model.info.names
    label = {p: "+".join(n for i, n in enumerate(names) if p >> i & 1) or "all" for p in range(len(fit.log_t))}
    return {"form": form,
            "temperature": {label[int(p)]: round(float(model.temperature[p]), 4) for p in np.unique(patterns)},
            "class_bias": [round(v, 4) for v in model.class_bias.tolist()], "val_nll_before": fit.nll_before,
            "val_nll_after": fit.nll_after}
