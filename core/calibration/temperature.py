"""Temperature scaling with a class-prior correction, fitted on what prediction reports.

Prediction reports p = mean_k softmax(l_k / T + b) over the K diffusion samples. T and b are fitted by
minimising the validation negative log-likelihood of exactly that average (pooled over natural
missingness and extra random masking). At the optimum of b the mean predicted probability of each class
equals its validation frequency, which undoes the prior shift of rare-class oversampling.
"""

from __future__ import annotations

import numpy as np
import torch

from core.features import FeatureTable
from core.inference import predict_table
from core.model.robustmdiff import RobustMDiff


def fit_temperature(model: RobustMDiff, table: FeatureTable, idx: np.ndarray, y: np.ndarray,
                    drops: list[np.ndarray | None], device="cpu", steps: int = 200) -> dict:
    """Set model.temperature and model.class_bias; returns the fit (T, b, NLL before and after)."""
    model.temperature.fill_(1.0)
    model.class_bias.zero_()
    # with T = 1 and b = 0, log p_k equals the logits up to a per-sample constant, which softmax ignores
    logp = np.concatenate([np.log(np.clip(predict_table(model, table, idx, d, device=device, describe=False)
                                          .sample_probs, 1e-12, 1)) for d in drops], 1)
    lp = torch.as_tensor(logp, dtype=torch.float64)
    target = torch.as_tensor(np.concatenate([y] * len(drops)))
    k = lp.shape[0]
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    b = torch.zeros(lp.shape[-1], dtype=torch.float64, requires_grad=True)

    def nll() -> torch.Tensor:
        mix = torch.logsumexp(torch.log_softmax(lp / log_t.exp() + b, -1), 0) - np.log(k)
        return -mix[torch.arange(len(target)), target].mean() + 1e-4 * (b ** 2).sum()

    with torch.no_grad():
        before = float(nll())
    opt = torch.optim.LBFGS([log_t, b], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nll()
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp().clamp(0.05, 20.0))
    model.temperature.fill_(t)
    model.class_bias.copy_((b.detach() - b.detach().mean()).float())
    return {"temperature": t, "class_bias": model.class_bias.tolist(), "val_nll_before": before,
            "val_nll_after": float(nll().detach())}
