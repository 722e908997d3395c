"""Model card: what the shipped model was trained on, how, how well, and what it is not for."""

from __future__ import annotations

import json

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import yaml

from core.evaluation import report
from core.evaluation.harness import condition_label
from core.names import display_name, display_names
from core.paths import ASSETS, DEFAULT_CHECKPOINT
from pages.common import NOTICE, get_predictor, inside_app

# the test metrics in words (column headers), with their definitions (tooltips)
# (short headers: nine columns fit a 1440 px screen; the words are in each tooltip)
METRICS = {
    "auroc": ("AUROC", "Telling the diagnoses apart. " + report.METRIC_HELP["auroc"].replace(" In %.", "")),
    "auprc": ("AUPRC", "Precision-recall area: area under the precision-recall curve per diagnosis, averaged: like "
              "AUROC, but it weighs how many of the cases flagged with a diagnosis really have it."),
    "accuracy": ("Accuracy", "Share of cases whose most probable diagnosis is the true one."),
    "f1": ("F1", "Harmonic mean of precision and recall per diagnosis, averaged over the diagnoses."),
    "sensitivity": ("Sensitivity", "Found: share of the cases with a diagnosis that get it as the top answer, "
                    "averaged over the diagnoses (recall)."),
    "specificity": ("Specificity", "Correctly ruled out: share of the cases without a diagnosis that do not get it "
                    "as the top answer, averaged over the diagnoses."),
    "ece": ("ECE", "Calibration error (expected calibration error: the gap between the stated confidence in the top "
            "diagnosis and how often it is right, averaged over 10 confidence bins weighted by their cases (0 = "
            "perfect)."),
}
# the synthesis-confidence table: short headers, the words in the tooltips
CONFIDENCE_COLUMNS = {
    "Hidden": "The modality switched off and synthesized.",
    "Views": "Test cases predicted without this modality (from each subset of the others).",
    "Cal. error": "ECE of the synthesis confidence: the gap between the stated confidence and how often the answer "
                  "really stayed the same, averaged over bins (0 = perfect).",
    "By chance": "The mean ECE a perfectly calibrated confidence would show on this many views (the noise floor).",
    "AUROC": "How well the confidence tells kept from changed answers: the chance that a view whose answer stays gets "
             "a higher confidence than one whose answer changes.",
    "Brier": "Brier score: mean squared gap between the confidence and what happened (1 = stayed, 0 = changed); "
             "lower is better.",
    "Mean conf.": "Average synthesis confidence over the views.",
    "Unchanged": "Share of views whose answer stayed the same once the real modality was added.",
    "Seed change": "How much the confidence moves when the diffusion samples are drawn with other seeds (mean "
                   "absolute change).",
}

inside_app()
st.title("Model card")
predictor = get_predictor()
meta = predictor.meta
spec = meta["spec"]

kinds = [m["type"] for m in spec["modalities"]]
shipped = f"weights `{meta['weights_sha256'][:8]}…`, data `{meta['data_fingerprint'][:8]}…`"
st.markdown(f"""
**Model.** RobustMDiff: {report.encoders(meta['config'], kinds)}, each with a trained head; knowledge-enhanced
fusion over {meta['n_concepts']} medical concepts, a conditional latent diffusion model that restores missing
modalities ({report.sampler(meta['config'])}), and a calibrated classifier (see Calibration). This checkpoint:
{shipped}.

**Training data.** `{spec['name']}`: {meta['data_size']} cases, diagnoses {', '.join(display_names(predictor.classes))}
(rare: {', '.join(display_names(spec.get('rare_classes', []))) or 'none'}). Data fingerprint `{meta['data_fingerprint'][:16]}…`.
Trained in {meta['train_seconds'] / 60:.1f} min on {meta['device']} with `{meta['command'] or 'python -m core train'}`.
""")
st.subheader("Test metrics for each combination of modalities")
st.caption(f"This checkpoint ({shipped}) on its own test split: complete test cases with the other modalities "
           "switched off, and the test split with modalities missing as they come. Hover a column title for its "
           "definition.")
rows = [{"Modalities": condition_label(k), **{METRICS[m][0]: v[m] for m in METRICS}, "Cases": v.get("n")}
        for k, v in meta["test_metrics"].items()]
st.dataframe(pd.DataFrame(rows).round(3), hide_index=True, width="stretch",
             column_config={"Modalities": st.column_config.TextColumn(width="medium"),
                            **{head: st.column_config.NumberColumn(help=text, width="small")
                               for head, text in METRICS.values()}})
st.subheader("Calibration")
temps = list(meta.get("calibration_fit", {}).get("temperature", {}).get("temperature", {}).values()) or [meta["temperature"]]
st.markdown(f"""
Class probabilities are softened or sharpened for each combination of modalities (a temperature between
{min(temps):.2f} and {max(temps):.2f}) and shifted per diagnosis, both fitted on the validation split, so that a stated
80 % is right about 80 % of the time; this also undoes the over-representation of rare diseases in training.
""", help="Probabilities are softmax(logits / T + b) averaged over the diffusion samples: a temperature T per "
          "availability pattern and a per-class prior correction b, fitted on exactly that average.")
st.markdown("""
The **synthesis confidence** of a missing modality is the probability that the answer stays the same when the
real modality is added. It is learned on validation cases, each predicted from every subset of its modalities,
by a logistic regression on the spread of the diffusion samples, the expected change and information gain of
that modality, the disagreement of the per-sample answers, the margin and entropy of the answer and which
modalities were given; its inputs are clipped to the range seen on validation, so it never claims 0 or 1.
Measured on the test split (`python -m core calibration`):
""")
cal = meta.get("calibration")
if cal:
    st.dataframe(pd.DataFrame([{"Hidden": display_name(m), "Views": c["n"], "Cal. error": c["ece"],
                                "By chance": c["ece_noise_floor"][0], "AUROC": c["auroc"], "Brier": c["brier"],
                                "Mean conf.": c["mean_confidence"], "Unchanged": c["unchanged_rate"],
                                "Seed change": cal["seed_sensitivity"][m]}
                               for m, c in cal["confidence"].items()]).round(3), hide_index=True, width="stretch",
                 column_config={k: st.column_config.Column(help=v) for k, v in CONFIDENCE_COLUMNS.items()})
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dash", color="#aaa"), name="ideal"))
    for m, c in cal["confidence"].items():
        fig.add_scatter(x=[b["mean_predicted"] for b in c["bins"]], y=[b["observed"] for b in c["bins"]],
                        mode="lines+markers", name=f"{display_name(m)} hidden")
    fig.update_layout(height=340, xaxis_title="synthesis confidence", yaxis_title="answer unchanged (observed)",
                      margin=dict(l=10, r=10, t=30, b=10), title="Reliability of the synthesis confidence (test)")
    st.plotly_chart(fig, width="stretch")
    p, nt = cal["probabilities"], cal["next_test"]
    lines = [f"- Class probabilities, modalities missing as they come: calibration error {p['ece']:.3f} (a perfectly "
             f"calibrated model would show about {p['ece_noise_floor'][0]:.3f} on these {cal['n_test']} cases), squared "
             f"error {p['brier']:.3f}; the mean predicted probability of every diagnosis is within "
             f"{p['prevalence_gap']:.3f} of how common it is."]
    if nt.get("n_views"):
        lines.append(f"- Which test next (the missing modality most likely to change the answer): it is the one whose real "
                     f"value changes the answer most in {nt['top1_agreement_probability_of_change']:.0%} of test views "
                     f"missing two or more (chance {nt['top1_chance']:.0%}).")
    lines += [f"- Assumed {display_name(m)} values: their 80 % intervals contain {a['coverage']:.0%} of the real test "
              "values." for m, a in cal["assumed_values"].items()]
    st.markdown("\n".join(lines), help="Calibration error: expected calibration error (ECE), the gap between the "
                "stated confidence and the accuracy averaged over 10 confidence bins. Squared error: the Brier score, "
                "the mean squared difference between the probabilities and the one-hot truth.")
    with st.expander("Targets"):
        st.table(report.targets_frame([{**t, "measured": round(t["measured"], 4)} for t in cal["targets"]]),
                 hide_index=True)
st.subheader("Inputs unlike the training data")
guard = meta.get("guard")
expect = {m["name"]: m["expect"] for m in spec["modalities"] if m.get("expect")}
st.markdown("A scan whose DICOM header contradicts what the model was trained on is refused ("
            + (", ".join(f"{n}: " + "; ".join(f"{k} {' or '.join(v)}" for k, v in e.items()) for n, e in expect.items())
               or "no expectation declared") + "), unless you override it. Every present input is also scored "
            "against the training data; above the threshold the diagnosis is greyed under a banner.")
if guard:
    st.dataframe(pd.DataFrame([{"input": display_name(m), "threshold": round(t, 2),
                                "flagged on validation": f"{guard['val_flagged'].get(m, float('nan')):.1%}",
                                "false alarms on test": f"{guard.get('test_flagged', {}).get(m, float('nan')):.1%}"}
                               for m, t in guard["thresholds"].items()]), hide_index=True, width="stretch")
    st.caption("Score: for scans and notes, how far the input lies from the training inputs (about 1 for a typical "
               "input); for labs, how rare the combination or the most extreme value is. Thresholds leave 1 % of "
               "held-out inputs flagged.", help="Images and notes: the distance to the nearest class of training "
               "inputs in the frozen encoder's feature space, in units of the typical distance. Labs: -log10 of the "
               "probability of the combination or of the most extreme value under the training distribution.")
else:
    st.warning("This checkpoint carries no out-of-distribution statistics: run `python -m core guard --fit`.")
evaluation = ASSETS / "evaluation" / "results.json"
if evaluation.exists():
    result = json.loads(evaluation.read_text(encoding="utf-8"))
    which, same = report.provenance(result, meta)
    title = "Comparison with baselines and ablations (python -m core evaluate)"
    with st.expander(title if same else title + ": an earlier model"):
        if not same:  # its figures differ from the table above: say why before anyone compares them
            st.info(which, icon=":material/history:")
        table, helps = report.comparison(result["rows"], result["modalities"])
        st.dataframe(table.round(1), hide_index=True, width="stretch", height=35 * (len(table) + 1) + 3,
                     column_config={c: st.column_config.Column(help=h) for c, h in helps.items()})
        st.caption(f"AUROC (%) on the {result['n_test_complete']} complete test cases with only the named modalities "
                   "given, mean over the training seeds. The Robustness lab shows accuracy, retention, rare diseases "
                   "and the figures; BENCHMARKS.md the full table with ± std.")
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
