"""The one place that turns internal names (classes, methods, modalities, availability patterns) into the
words people read. Pages, reports, figures and tables call `display_name`; data, files and the CLI keep
the internal names, so nothing downstream depends on wording.

Unknown names (a user's own classes) are shown with underscores as spaces, so an own data set needs no
entry here; a data set may still give its classes display names in its spec (`display_names`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# diagnoses of the embedded cohort
CLASSES: dict[str, str] = {
    "no_acute_disease": "No acute disease",
    "pneumonia": "Pneumonia",
    "heart_failure": "Heart failure",
    "pulmonary_embolism": "Pulmonary embolism",
    "pneumothorax": "Pneumothorax",
    "tuberculosis": "Tuberculosis",
    "aortic_dissection": "Aortic dissection",
}

# how missing modalities are handled: the evaluation's methods (core/evaluation/methods.py)
METHODS: dict[str, str] = {
    "robustmdiff": "RobustMDiff",
    "early_zero": "Early fusion, zero imputation",
    "early_mean": "Early fusion, mean imputation",
    "missing_token": "Learned missing-modality token",
    "dropout_0.3": "Modality dropout p=0.3",
    "dropout_0.5": "Modality dropout p=0.5",
    "late_fusion": "Late fusion",
    "masked_attention": "Masked attention (MARIA-style)",
    "must_style": "MUST-style diffusion (50 steps × 5 samples)",
    "no_diffusion": "w/o diffusion",
    "no_knowledge": "w/o knowledge attention",
    "no_curriculum": "w/o curriculum (fixed masking)",
    "no_consistency": "w/o consistency",
    "no_rare_sampling": "w/o rare-disease sampling",
}

# how a prediction is explained (core/explain)
ATTRIBUTIONS: dict[str, str] = {
    "integrated_gradients": "Integrated Gradients",
    "gradient_x_input": "Gradient × input",
    "shap": "SHAP",
    "kernel_shap": "KernelSHAP",
    "grad_cam": "Grad-CAM",
    "random": "Random (control)",
}

MODALITIES: dict[str, str] = {"image": "Scan", "note": "Clinical note", "labs": "Labs"}

_ALL: dict[str, str] = {**CLASSES, **METHODS, **ATTRIBUTIONS, **MODALITIES}


def display_name(name: str, extra: Mapping[str, str] | None = None) -> str:
    """The words shown for an internal name: `extra` first (e.g. a data set's own display names), then
    the project's names, then the name with underscores as spaces, first letter up."""
    if extra and name in extra:
        return extra[name]
    if name in _ALL:
        return _ALL[name]
    if name.startswith("single_"):
        return f"Single modality: {display_name(name[len('single_'):], extra)}"
    text = name.replace("_", " ").strip()
    return text[:1].upper() + text[1:] if text else name


def display_names(names: Iterable[str], extra: Mapping[str, str] | None = None) -> list[str]:
    return [display_name(n, extra) for n in names]
