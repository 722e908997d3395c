"""Temperature per availability pattern with a class-prior correction, fitted on what prediction reports.

Prediction reports p = mean_k softmax(l_k / T_m + b) over the K diffusion samples, where T_m depends on
which modalities were given (a case read from its labs alone is less sure than a complete one) and b is
one bias per class. Both are fitted by minimising the negative log-likelihood of exactly that average on
validation views (every validation case predicted from every subset of its modalities), each case
weighted equally; the pattern temperatures are shrunk towards their common value, so a rare pattern
cannot drift on a handful of cases. At the optimum of b the mean predicted probability of each class
equals its validation frequency, which undoes the prior shift of rare-class oversampling.
"""

from __future__ import annotations

import numpy as np
import torch

from core.calibration.views import Views
from core.model.robustmdiff import RobustMDiff, pattern_index

SHRINK = 0.05  # weight of the penalty pulling each log T_m towards their mean


def reset(model: RobustMDiff) -> None:
    model.temperature.fill_(1.0)
    model.class_bias.zero_()


def fit_temperature(model: RobustMDiff, views: Views, labels: np.ndarray, steps: int = 300) -> dict:
    """Set model.temperature and model.class_bias from views predicted with T = 1, b = 0 (see `reset`);
    `labels` are the classes of the views' rows. Returns the fit."""
    # with T = 1 and b = 0, log p_k equals the logits up to a per-sample constant, which softmax ignores
    lp = torch.as_tensor(np.log(np.clip(views.out.sample_probs, 1e-12, 1)), dtype=torch.float64)
    target = torch.as_tensor(labels)
    pattern = pattern_index(torch.as_tensor(views.given))
    _, per_case = np.unique(views.rows, return_counts=True)
    counts = dict(zip(np.unique(views.rows), per_case))
    weight = torch.as_tensor([1.0 / counts[r] for r in views.rows], dtype=torch.float64)
    weight = weight / weight.sum()
    k, n_t = lp.shape[0], model.temperature.numel()
    log_t = torch.zeros(n_t, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(lp.shape[-1], dtype=torch.float64, requires_grad=True)
    used = torch.zeros(n_t, dtype=torch.bool)
    used[pattern.unique()] = True

    def nll() -> torch.Tensor:
        t = log_t.exp()[pattern].unsqueeze(-1)
        mix = torch.logsumexp(torch.log_softmax(lp / t + b, -1), 0) - np.log(k)
        fit = -(weight * mix[torch.arange(len(target)), target]).sum()
        return fit + SHRINK * ((log_t[used] - log_t[used].mean()) ** 2).mean() + 1e-4 * (b ** 2).sum()

    with torch.no_grad():
        before = float(nll())
    opt = torch.optim.LBFGS([log_t, b], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nll()
        loss.backward()
        return loss

    opt.step(closure)
    log_t = log_t.detach()
    log_t[~used] = log_t[used].mean()  # patterns validation never showed get the common temperature
    model.temperature.copy_(log_t.exp().clamp(0.05, 20.0).float())
    model.class_bias.copy_((b.detach() - b.detach().mean()).float())
    with torch.no_grad():
        after = float(nll())
    names = model.info.names
    label = {p: "+".join(n for i, n in enumerate(names) if p >> i & 1) or "all" for p in range(n_t)}
    return {"temperature": {label[int(p)]: round(float(model.temperature[p]), 4) for p in used.nonzero().flatten()},
            "class_bias": [round(v, 4) for v in model.class_bias.tolist()], "val_nll_before": before, "val_nll_after": after}
