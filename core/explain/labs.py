"""Lab attributions: Integrated Gradients and SHAP over the measured labs, the other modalities fixed.

Both work on standardised values (0 = the training mean). IG integrates from the training mean to the
patient's value. SHAP (permutation explainer, interventional) replaces labs by values of training
patients (the background) and averages the effect over orderings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import shap
import torch
from captum.attr import InputXGradient, IntegratedGradients

from core.explain.graph import CaseGraph

LAB_METHODS = ("integrated_gradients", "shap", "gradient_x_input")


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
    shap: float

    def to_dict(self) -> dict:
        return asdict(self)


def lab_ig(graph: CaseGraph, name: str, target: int, steps: int = 32, method: str = "integrated_gradients"
           ) -> tuple[np.ndarray, float]:
    z, measured = graph.lab_inputs(name)

    def f(x: torch.Tensor) -> torch.Tensor:
        return graph.objective(graph.probs_from_labs(name, x, measured), target)

    if method == "gradient_x_input":
        return InputXGradient(f).attribute(z.clone().requires_grad_(True))[0].detach().cpu().numpy(), 0.0
    attr, delta = IntegratedGradients(f).attribute(z, baselines=torch.zeros_like(z), n_steps=steps,
                                                   method="gausslegendre", return_convergence_delta=True)
    return attr[0].detach().cpu().numpy(), float(delta.abs().max())


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

    explainer = shap.explainers.Permutation(f, shap.maskers.Independent(bg, max_samples=len(bg)), seed=0)
    values = explainer(z[0, idx].cpu().numpy()[None], max_evals=max(max_evals, 2 * len(idx) + 1), silent=True)
    out[idx] = values.values[0]
    return out


def lab_attribution(graph: CaseGraph, name: str, target: int | None = None, score: np.ndarray | None = None,
                    background: np.ndarray | None = None) -> tuple[list[LabAttribution], float]:
    """IG and SHAP for every lab; `score` (catalogue order) is the explanation method's own, IG by default."""
    target = graph.target if target is None else target
    ig, delta = lab_ig(graph, name, target)
    sh = lab_shap(graph, name, target, background)
    score = ig if score is None else score
    panel = graph.case.inputs[name]
    rows = []
    for j, lab in enumerate(graph.predictor.spec.lab_features(name)):
        v = panel.values.get(lab.name)
        rows.append(LabAttribution(lab.name, lab.label, v.value if v else None, lab.unit, lab.ref_text(),
                                   v.flag if v else "", float(score[j]), float(ig[j]), float(sh[j])))
    rows.sort(key=lambda r: -abs(r.score))
    return rows, delta
