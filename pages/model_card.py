"""Model card: what the shipped model was trained on, how, how well, and what it is not for."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st
import yaml

from core.paths import ASSETS, DEFAULT_CHECKPOINT
from pages.common import NOTICE, get_predictor

st.title("Model card")
predictor = get_predictor()
meta = predictor.meta
spec = meta["spec"]

st.markdown(f"""
**Model.** RobustMDiff: frozen EfficientNet-Lite0 (images) and all-MiniLM-L6-v2 (notes) with trained heads, a lab
MLP, knowledge-enhanced fusion over {meta['n_concepts']} medical concepts, a conditional latent diffusion model that
restores missing modalities ({predictor.model.config.diffusion.sample_steps} DDIM steps × {predictor.model.config.diffusion.samples}
samples), and a classifier with temperature scaling (T = {meta['temperature']:.2f}).

**Training data.** `{spec['name']}`: {meta['data_size']} cases, classes {', '.join(predictor.classes)}
(rare: {', '.join(spec.get('rare_classes', [])) or 'none'}). Data fingerprint `{meta['data_fingerprint'][:16]}…`.
Trained in {meta['train_seconds'] / 60:.1f} min on {meta['device']} with `{meta['command'] or 'python -m core train'}`.
""")
st.subheader("Test metrics per availability pattern")
st.caption("Complete test cases with the other modalities switched off; 'natural' = the test split as it comes.")
rows = [{"pattern": k, **{m: v[m] for m in ("auroc", "auprc", "accuracy", "f1", "sensitivity", "specificity", "ece")},
         "n": v.get("n")} for k, v in meta["test_metrics"].items()]
st.dataframe(pd.DataFrame(rows).round(3), hide_index=True)
st.subheader("Calibration")
st.markdown("Class probabilities are temperature-scaled on the validation split. The synthesis confidence of a "
            "missing modality is the validation rate at which the answer with the synthesized latent matched the "
            "answer with the real one, for cases whose diffusion samples disagreed as much.")
st.dataframe(pd.DataFrame(meta.get("confidence_calibration", {})).T, width="stretch")
evaluation = ASSETS / "evaluation" / "table.md"
if evaluation.exists():
    with st.expander("Comparison with baselines and ablations (python -m core evaluate)"):
        st.markdown(evaluation.read_text(encoding="utf-8"))
st.subheader("Intended use and limits")
st.markdown(f"""
- **{NOTICE}**
- Trained on a synthetic cohort whose images are far simpler than real radiographs; its numbers say that the
  method works as designed, not how it would perform on patients.
- A synthesized modality is a statistical guess of a latent representation, never a reconstruction of the
  missing test; its confidence is calibrated on validation data of the same cohort.
- To use it on real data, train and evaluate your own model (`python -m core train --data …`, `python -m core evaluate`).
""")
with st.expander("Configuration"):
    st.code(yaml.safe_dump(meta["config"], sort_keys=False), language="yaml")
with st.expander("Checkpoint files"):
    st.code("\n".join(f"{p.name}  {p.stat().st_size / 2**20:.1f} MB" for p in sorted(DEFAULT_CHECKPOINT.iterdir())))
    st.caption(f"weights sha256 {meta['weights_sha256']}")
    st.download_button("Download meta.json", json.dumps(meta, indent=1), "meta.json", key="meta")
