"""Lab attributions: Integrated Gradients and SHAP over the measured labs, the other modalities fixed.

Both work on standardised values (0 = the training mean). IG integrates from the training mean to the
patient's value, with its step count chosen per case until the completeness error is within 5 %
(core/explain/ig.py). SHAP (permutation explainer, interventional) replaces labs by values of training
patients (the background) and averages the effect over orderings; its orderings come from a fixed seed,
so the same case always gets the same values (and numpy's global random state is left as it was).
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

import numpy as np
import shap
import torch
from captum.attr import InputXGradient

from core.explain.graph import CaseGraph
from core.explain.ig import SCHEDULE, IGResult

LAB_METHODS = ("integrated_gradients", "shap", "gradient_x_input")
_SHAP_LOCK = threading.Lock()


@dataclass
class LabAttribution:
    lab: str
    label: str
    value: float | None
    unit: str
    reference: str
    flag: str
    score: float  # the attribution of the explanation's method (what the app ranks by)
    integrated_gradients: float
    shap: float  # NaN unless SHAP was asked for (it costs more than the rest of the lab explanation)

    def to_dict(self) -> dict:
        return asdict(self)


def lab_ig(graph: CaseGraph, name: str, target: int, steps: int | tuple[int, ...] = SCHEDULE,
           method: str = "integrated_gradients") -> tuple[np.ndarray, IGResult | None]:
    """Attributions of every lab (catalogue order; unmeasured labs 0) and, for IG, its result (relative
    completeness error and steps used; None for gradient × input)."""
    z, measured = graph.lab_inputs(name)

    def f(x: torch.Tensor) -> torch.Tensor:
        return graph.objective(graph.probs_from_labs(name, x, measured), target)

    if method == "gradient_x_input":
        return InputXGradient(f).attribute(z.clone().requires_grad_(True))[0].detach().cpu().numpy(), None
    info = graph.integrate(graph.index(name), lambda x: graph.lab_latent(name, x, measured), z, torch.zeros_like(z),
                           target, schedule=(steps,) if isinstance(steps, int) else tuple(steps))
    return info.attributions[0].detach().cpu().numpy(), info


def lab_shap(graph: CaseGraph, name: str, target: int, background: np.ndarray | None = None,
             max_evals: int = 200) -> np.ndarray:
    """SHAP values of the measured labs (unmeasured labs get 0). `background`: standardised training rows."""
    z, measured = graph.lab_inputs(name)
    idx = torch.nonzero(measured[0]).flatten().cpu().numpy()
    out = np.zeros(z.shape[1])
    if len(idx) == 0:
        return out
    bg = np.zeros((1, len(idx))) if background is None else np.nan_to_num(background[:, idx], nan=0.0)

    def f(x: np.ndarray) -> np.ndarray:
        full = z.repeat(len(x), 1).clone()
        full[:, idx] = torch.as_tensor(x, dtype=full.dtype, device=full.device)
        with torch.no_grad():
            return graph.objective(graph.probs_from_labs(name, full, measured), target).cpu().numpy()

    # shap seeds numpy's global generator and draws its orderings from it: one explainer at a time in this
    # process (the app explains in several threads), and the global state restored for everyone else
    with _SHAP_LOCK:
        state = np.random.get_state()
        try:
            explainer = shap.explainers.Permutation(f, shap.maskers.Independent(bg, max_samples=len(bg)), seed=0)
            values = explainer(z[0, idx].cpu().numpy()[None], max_evals=max(max_evals, 2 * len(idx) + 1), silent=True)
        finally:
            np.random.set_state(state)
    out[idx] = values.values[0]
    return out


def lab_attribution(graph: CaseGraph, name: str, target: int | None = None, score: np.ndarray | None = None,
                    background: np.ndarray | None = None, rank_by: str = "integrated_gradients",
                    with_shap: bool | None = None) -> tuple[list[LabAttribution], IGResult]:
    """IG for every lab, SHAP too when `with_shap` (default: when ranking by it), and IG's result (relative
    completeness error, steps). The rows are ranked by `score` (catalogue order; the explanation method's own)
    or, without it, by `rank_by` (IG or SHAP)."""
    target = graph.target if target is None else target
    ig, info = lab_ig(graph, name, target)
    with_shap = rank_by == "shap" if with_shap is None else with_shap
    sh = lab_shap(graph, name, target, background) if with_shap else np.full_like(ig, np.nan)
    if score is None:
        score = {"integrated_gradients": ig, "shap": sh}[rank_by]
    panel = graph.case.inputs[name]
    rows = []
    for j, lab in enumerate(graph.predictor.lab_catalogue(name)):
        v = panel.values.get(lab.name)
        rows.append(LabAttribution(lab.name, lab.label, v.value if v else None, lab.unit, lab.ref_text(),
                                   v.flag if v else "", float(score[j]), float(ig[j]), float(sh[j])))
    rows.sort(key=lambda r: -abs(r.score))
    return rows, info
