"""Post-training calibration on validation data, so that what the app shows means what it says.

`calibrate` runs every fit in order (each stored as buffers on the model, hence in the checkpoint):
1. latent scale (training latents): the unit of the synthesis spread;
2. lab decoders and the concept baseline (`assumed.py`) on real latents;
3. validation views (`views.py`: every case from every subset of its modalities, with the sampler
   settings of prediction) → the temperature per pattern and the class-prior bias (`temperature.py`);
4. the views again with those probabilities → the synthesis confidence (`confidence.py`), the lab
   intervals' coverage factor, and each 'which test next' rule's agreement (`next_test.py`, the choice).
`report.py` measures the result on the test split (`python -m core calibration`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from core.calibration.assumed import fit_concept_baseline, fit_decoders, fit_intervals, real_latents
from core.calibration.confidence import fit_confidence
from core.calibration.next_test import refitted_confidence, rule_scores, validation_summary
from core.calibration.temperature import fit_temperature, reset
from core.calibration.views import case_views
from core.features import FeatureTable
from core.model.robustmdiff import RobustMDiff


@torch.no_grad()
def fit_latent_scale(model: RobustMDiff, table: FeatureTable, idx: np.ndarray, device=None) -> None:
    """The population spread of each modality's latent (mean over dimensions of its std across cases). A
    modality whose inputs are all alike (every note the same template) has none: its scale stays 1, so that
    the spread of its samples is not divided by zero."""
    h, present = real_latents(model, table, idx, device)
    scale = [float(h[present[:, i], i].std(0).mean()) if int(present[:, i].sum()) > 1 else 1.0
             for i in range(h.shape[1])]
    scale = [s if s > 1e-6 else 1.0 for s in scale]
    model.latent_scale.copy_(torch.tensor(scale))


def calibrate(model: RobustMDiff, table: FeatureTable, labels: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray,
              device=None, on_progress: Callable[[float, str], None] | None = None) -> dict:
    """Every post-training fit (`labels`: the class of every row of the table; `device`: the model's by default).
    `on_progress(fraction of the calibration, what it does)` after each batch of predictions: the two
    passes over every validation case seen from every subset of its modalities take most of the time."""
    say = on_progress or (lambda f, text: None)
    diffusion = model.denoiser is not None
    # shares of the time on a 2-core CPU: the described views (confidence inputs) cost about twice the raw ones
    shares = (0.1, 0.3, 0.6) if diffusion else (0.1, 0.9, 0.0)

    def views_progress(offset: float, share: float, what: str) -> Callable[[int, int], None]:
        return lambda done, total: say(offset + share * done / total, f"{what} ({done} of {total} views)")

    model.eval()
    say(0.0, "fitting the latent scale" + (" and the lab decoders" if diffusion else ""))
    fit_latent_scale(model, table, train_idx, device)
    report = {}
    if diffusion:
        report["lab_decoders"] = fit_decoders(model, table, train_idx, val_idx, device)
        fit_concept_baseline(model, table, train_idx, device)
    reset(model)
    raw = case_views(model, table, val_idx, device=device, describe=False,
                     on_batch=views_progress(shares[0], shares[1], "calibrating the probabilities"))
    report["temperature"] = fit_temperature(model, raw, labels[raw.rows], model.config.training.calibrator)
    if not diffusion:
        return report
    views = case_views(model, table, val_idx, device=device,
                       on_batch=views_progress(shares[0] + shares[1], shares[2], "learning the synthesis confidence"))
    report["confidence"] = fit_confidence(model, views)
    report["lab_intervals"] = fit_intervals(model, table, views)
    # the 'which test next' rules on these validation views, with the confidence just fitted (chosen in report.py)
    report["next_test"] = validation_summary(views, rule_scores(views.out, refitted_confidence(model, views.out)))
    return report
