"""What synthesis assumed, in words a clinician reads.

- Lab decoders: a ridge regression from real lab latents to standardised lab values (training split),
  the residual scale of each lab on validation, and an interval factor so that, on validation cases
  whose labs were hidden and synthesized, [low, high] covers 80 % of the real values (split conformal).
- Concept baseline: the average knowledge attention of each modality's real latents, so that a
  synthesized latent's concepts are shown by how much more it attends to them than usual.
"""

from __future__ import annotations

import numpy as np
import torch

from core.calibration.views import Views
from core.features import FeatureTable
from core.inference import encode_table
from core.model.robustmdiff import RobustMDiff

RIDGE = 1.0
COVERAGE = 0.8
MIN_LAB_VALUES = 30


def real_latents(model: RobustMDiff, table: FeatureTable, idx: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents H (N, M, d_h) and presence (N, M) of the real inputs, on the CPU."""
    h, p = encode_table(model, table, np.asarray(idx), device)
    return h.cpu(), p.cpu()


def standardised_labs(model: RobustMDiff, name: str, values: np.ndarray) -> np.ndarray:
    enc = model.encoders[name]
    v = torch.as_tensor(values, device=enc.mean.device)
    return enc.transform(torch.nan_to_num(v, nan=0.0)).masked_fill(torch.isnan(v), float("nan")).cpu().numpy()


@torch.no_grad()
def fit_decoders(model: RobustMDiff, table: FeatureTable, train_idx: np.ndarray, val_idx: np.ndarray, device) -> dict:
    """Ridge weights on training latents, residual scale on validation latents (both real)."""
    report = {}
    h_tr, p_tr = real_latents(model, table, train_idx, device)
    h_va, p_va = real_latents(model, table, val_idx, device)
    for name, dec in model.decoders.items():
        i = model.info.names.index(name)
        x, y = h_tr[p_tr[:, i], i].double().numpy(), standardised_labs(model, name, table.tabular[name][train_idx[p_tr[:, i].numpy()]])
        xv, yv = h_va[p_va[:, i], i].double().numpy(), standardised_labs(model, name, table.tabular[name][val_idx[p_va[:, i].numpy()]])
        w, b, sigma = np.zeros((y.shape[1], x.shape[1])), np.zeros(y.shape[1]), np.ones(y.shape[1])
        for lab in range(y.shape[1]):
            ok = np.isfinite(y[:, lab])
            if ok.sum() < MIN_LAB_VALUES:
                continue
            xm, ym = x[ok].mean(0), y[ok, lab].mean()
            xc = x[ok] - xm
            w[lab] = np.linalg.solve(xc.T @ xc + RIDGE * np.eye(x.shape[1]), xc.T @ (y[ok, lab] - ym))
            b[lab] = ym - xm @ w[lab]
            okv = np.isfinite(yv[:, lab])
            if okv.sum() >= 2:
                sigma[lab] = float(np.sqrt(np.mean((xv[okv] @ w[lab] + b[lab] - yv[okv, lab]) ** 2)))
        dec.weight.copy_(torch.as_tensor(w, dtype=torch.float32))
        dec.bias.copy_(torch.as_tensor(b, dtype=torch.float32))
        dec.sigma.copy_(torch.as_tensor(np.maximum(sigma, 1e-3), dtype=torch.float32))
        report[name] = {"residual_sd": [round(float(s), 4) for s in sigma]}
    return report


def interval_hits(model: RobustMDiff, table: FeatureTable, views: Views, name: str):
    """For views whose tabular modality `name` was synthesized although the case has it: the real
    standardised values, and the median, low and high the synthesis implied, (n, L) each."""
    i = model.info.names.index(name)
    sel = np.flatnonzero(~views.given[:, i] & table.present[views.rows, i])
    real = standardised_labs(model, name, table.tabular[name][views.rows[sel]])
    med, low, high = (a[sel] for a in views.out.assumed[name])
    return real, med, low, high


def fit_intervals(model: RobustMDiff, table: FeatureTable, views: Views) -> dict:
    """Interval factor q per lab so that median ± q·scale covers 80 % of validation values."""
    report = {}
    for name, dec in model.decoders.items():
        real, med, _, high = interval_hits(model, table, views, name)
        scale = (high - med) / dec.q.cpu().numpy()
        r = np.abs(real - med) / scale
        pooled = r[np.isfinite(r)]
        if len(pooled) < MIN_LAB_VALUES:
            continue
        q = np.full(r.shape[1], np.quantile(pooled, COVERAGE))
        for lab in range(r.shape[1]):
            ok = np.isfinite(r[:, lab])
            if ok.sum() >= MIN_LAB_VALUES:
                q[lab] = np.quantile(r[ok, lab], COVERAGE)
        dec.q.copy_(torch.as_tensor(q, dtype=torch.float32))
        report[name] = {"q": [round(float(v), 3) for v in q], "n": int(np.isfinite(r).sum())}
    return report


@torch.no_grad()
def fit_concept_baseline(model: RobustMDiff, table: FeatureTable, train_idx: np.ndarray, device) -> None:
    h, p = real_latents(model, table, train_idx, device)
    att = model.concept_attention(h.to(model.concept_baseline.device))
    if att is None:
        return
    att = att.cpu()
    for i in range(p.shape[1]):
        if p[:, i].any():
            model.concept_baseline[i].copy_(att[p[:, i], i].mean(0))
