"""Model card: what the shipped model was trained on, how, how well, and what it is not for."""

from __future__ import annotations

import json

import pandas as pd
import plotly.graph_objects as go
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
samples), and a calibrated classifier (see Calibration).

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
temps = list(meta.get("calibration_fit", {}).get("temperature", {}).get("temperature", {}).values()) or [meta["temperature"]]
st.markdown(f"""
Class probabilities are softmax(logits / T + b) averaged over the diffusion samples, with a temperature T for each
availability pattern ({min(temps):.2f}–{max(temps):.2f}) and a per-class prior correction b, fitted on the validation
split on exactly that average (this also undoes the prior shift of rare-class oversampling).

The **synthesis confidence** of a missing modality is the probability that the answer stays the same when the
real modality is added. It is learned on validation cases, each predicted from every subset of its modalities,
by a logistic regression on the spread of the diffusion samples, the expected change and information gain of
that modality, the disagreement of the per-sample answers, the margin and entropy of the answer and which
modalities were given; its inputs are clipped to the range seen on validation, so it never claims 0 or 1.
Measured on the test split (`python -m core calibration`):
""")
cal = meta.get("calibration")
if cal:
    st.dataframe(pd.DataFrame([{"modality hidden": m, "views": c["n"], "confidence ECE": c["ece"],
                                "ECE of a perfectly calibrated model (mean)": c["ece_noise_floor"][0], "AUROC": c["auroc"],
                                "Brier": c["brier"], "mean confidence": c["mean_confidence"],
                                "answer unchanged": c["unchanged_rate"], "seed sensitivity": cal["seed_sensitivity"][m]}
                               for m, c in cal["confidence"].items()]).round(3), hide_index=True, width="stretch")
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dash", color="#aaa"), name="ideal"))
    for m, c in cal["confidence"].items():
        fig.add_scatter(x=[b["mean_predicted"] for b in c["bins"]], y=[b["observed"] for b in c["bins"]],
                        mode="lines+markers", name=f"{m} hidden")
    fig.update_layout(height=340, xaxis_title="synthesis confidence", yaxis_title="answer unchanged (observed)",
                      margin=dict(l=10, r=10, t=30, b=10), title="Reliability of the synthesis confidence (test)")
    st.plotly_chart(fig, width="stretch")
    p, nt = cal["probabilities"], cal["next_test"]
    lines = [f"- Class probabilities under natural missingness: ECE {p['ece']:.3f} (a perfectly calibrated model would "
             f"show about {p['ece_noise_floor'][0]:.3f} on these {cal['n_test']} cases), Brier {p['brier']:.3f}; the mean "
             f"predicted probability of every class is within {p['prevalence_gap']:.3f} of its prevalence."]
    if nt.get("n_views"):
        lines.append(f"- Which test next (the missing modality most likely to change the answer): it is the one whose real "
                     f"value changes the answer most in {nt['top1_agreement_probability_of_change']:.0%} of test views "
                     f"missing two or more (chance {nt['top1_chance']:.0%}).")
    lines += [f"- Assumed {m} values: their 80 % intervals contain {a['coverage']:.0%} of the real test values."
              for m, a in cal["assumed_values"].items()]
    st.markdown("\n".join(lines))
    with st.expander("Targets"):
        st.dataframe(pd.DataFrame([{"target": t["target"], "measured": round(t["measured"], 4),
                                    "met": "yes" if t["met"] else "no"} for t in cal["targets"]]),
                     hide_index=True, width="stretch")
st.subheader("Inputs unlike the training data")
guard = meta.get("guard")
expect = {m["name"]: m["expect"] for m in spec["modalities"] if m.get("expect")}
st.markdown("A scan whose DICOM header contradicts what the model was trained on is refused ("
            + (", ".join(f"{n}: " + "; ".join(f"{k} {' or '.join(v)}" for k, v in e.items()) for n, e in expect.items())
               or "no expectation declared") + "), unless you override it. Every present input is also scored "
            "against the training data; above the threshold the diagnosis is greyed under a banner.")
if guard:
    st.dataframe(pd.DataFrame([{"input": m, "threshold": round(t, 2),
                                "flagged on validation": f"{guard['val_flagged'].get(m, float('nan')):.1%}",
                                "false alarms on test": f"{guard.get('test_flagged', {}).get(m, float('nan')):.1%}"}
                               for m, t in guard["thresholds"].items()]), hide_index=True, width="stretch")
    st.caption("Score: images and notes, the distance to the nearest class of training inputs in the frozen "
               "encoder's feature space (about 1 for a typical input); labs, -log10 of how rare the combination "
               "or the most extreme value is. Thresholds leave 1 % of held-out inputs flagged.")
else:
    st.warning("This checkpoint carries no out-of-distribution statistics: run `python -m core guard --fit`.")
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
  missing test; its confidence and the assumed lab values are calibrated on validation data of the same cohort.
- To use it on real data, train and evaluate your own model (`python -m core train --data …`, `python -m core evaluate`).
""")
with st.expander("Configuration"):
    st.code(yaml.safe_dump(meta["config"], sort_keys=False), language="yaml")
with st.expander("Checkpoint files"):
    st.code("\n".join(f"{p.name}  {p.stat().st_size / 2**20:.1f} MB" for p in sorted(DEFAULT_CHECKPOINT.iterdir())))
    st.caption(f"weights sha256 {meta['weights_sha256']}")
    st.download_button("Download meta.json", json.dumps(meta, indent=1), "meta.json", key="meta")
