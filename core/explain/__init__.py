"""Explanations: per-modality contributions, image heatmaps, note word attributions, lab attributions
(Integrated Gradients and SHAP), synthesis confidence and the value of acquiring a missing modality."""
