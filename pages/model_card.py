"""Model card: what the open model (the shipped one, or RMD_CHECKPOINT's) was trained on, how, how well, and what
it is not for; every figure from its meta.json and the evaluation recorded beside it."""

from __future__ import annotations

import json

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import yaml

from core.evaluation import describe, report
from core.evaluation.harness import condition_label
from core.prediction import NEXT_TEST_RULES
from core.names import display_name, display_names
from core.open_model import shown
from pages.common import NOTICE, get_open_model, get_predictor, inside_app

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
open_model = get_open_model()
meta = predictor.meta
spec = meta["spec"]
described = open_model.describe(meta)

kinds = [m["type"] for m in spec["modalities"]]
shipped = f"weights `{str(meta.get('weights_sha256', '?'))[:8]}…`, data `{str(meta.get('data_fingerprint', '?'))[:8]}…`"
trained = (f"Trained in {meta['train_seconds'] / 60:.1f} min on {meta.get('device', '?')} "
           if meta.get("train_seconds") is not None else "Trained ")
st.markdown(f"""
**{"The shipped model" if open_model.shipped else "Your own model"}** `{described['name']}`:
{display_name(described['method'])}, trained {described['date']}.

**Model.** RobustMDiff: {describe.encoders(meta['config'], kinds)}, each with a trained head; knowledge-enhanced
fusion over {meta.get('n_concepts', '?')} medical concepts, a conditional latent diffusion model that restores missing
modalities ({describe.sampler(meta['config'])}), and a calibrated classifier (see Calibration). This checkpoint:
{shipped}.

**Training data.** `{spec['name']}`: {meta.get('data_size', '?')} cases, diagnoses {', '.join(display_names(predictor.classes))}
(rare: {', '.join(display_names(spec.get('rare_classes', []))) or 'none'}). Data fingerprint `{str(meta.get('data_fingerprint', '?'))[:16]}…`.
{trained}with `{meta.get('command') or 'python -m core train'}`.
""")
st.subheader("Test metrics for each combination of modalities")
st.caption(f"This checkpoint ({shipped}) on its own test split: complete test cases with the other modalities "
           "switched off, and the test split with modalities missing as they come. Hover a column title for its "
           "definition.")
rows = [{"Modalities": condition_label(k), **{METRICS[m][0]: v.get(m) for m in METRICS}, "Cases": v.get("n")}
        for k, v in (meta.get("test_metrics") or {}).items()]
if rows:
    st.dataframe(pd.DataFrame(rows).round(3), hide_index=True, width="stretch",
                 column_config={"Modalities": st.column_config.TextColumn(width="medium"),
                                **{head: st.column_config.NumberColumn(help=text, width="small")
                                   for head, text in METRICS.values()}})
else:
    st.info("This checkpoint's meta.json records no test metrics. Score it on its test split with "
            f"`{open_model.command('score')}`.", icon=":material/info:")
st.subheader("Calibration")
temps = (list(((meta.get("calibration_fit") or {}).get("temperature") or {}).get("temperature", {}).values())
         or ([meta["temperature"]] if meta.get("temperature") is not None else []))
fitted = (f"(a temperature between {min(temps):.2f} and {max(temps):.2f})" if temps else
          "(this checkpoint records no fitted temperature)")
st.markdown(f"""
Class probabilities are softened or sharpened for each combination of modalities {fitted} and shifted per
diagnosis, both fitted on the validation split, so that a stated 80 % is right about 80 % of the time; this also
undoes the over-representation of rare diseases in training.
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
        rule = nt.get("chosen_rule", "probability_of_change")
        measured = nt.get("test", {}).get(rule, {})
        agree = measured.get("agreement", nt.get(f"top1_agreement_{rule}"))
        ci = measured.get("interval")
        lines.append(f"- Which test next: ranking the missing modalities by {NEXT_TEST_RULES[rule][1]} puts first the one "
                     f"whose real value changes the answer most in {agree:.0%} of test views missing two or more"
                     + (f" (95 % interval {ci[0]:.0%}–{ci[1]:.0%})" if ci else "") + f", chance {nt['top1_chance']:.0%}. "
                     + ("The app names that modality." if nt.get("above_chance") else "Not shown to beat chance: the "
                        "app lists each missing modality's chance of changing the answer and names none."))
    lines += [f"- Assumed {display_name(m)} values: their 80 % intervals contain {a['coverage']:.0%} of the real test "
              "values." for m, a in cal["assumed_values"].items()]
    st.markdown("\n".join(lines), help="Calibration error: expected calibration error (ECE), the gap between the "
                "stated confidence and the accuracy averaged over 10 confidence bins. Squared error: the Brier score, "
                "the mean squared difference between the probabilities and the one-hot truth.")
    with st.expander("Targets"):
        st.table(report.targets_frame([{**t, "measured": round(t["measured"], 4)} for t in cal["targets"]]),
                 hide_index=True)
else:
    st.info("This checkpoint's meta.json has no measured synthesis confidence (an older or tiny checkpoint): run "
            f"`{open_model.command('calibration')}`.", icon=":material/info:")
st.subheader("Inputs unlike the training data")
guard = meta.get("guard")
expect = {m["name"]: m["expect"] for m in spec["modalities"] if m.get("expect")}
st.markdown(("A scan whose DICOM header contradicts what the model was trained on is refused ("
             + (", ".join(f"{n}: " + "; ".join(f"{k} {' or '.join(v)}" for k, v in e.items()) for n, e in expect.items())
                or "no expectation declared") + "), unless you override it. " if "image" in kinds else "")
            + "Every present input is scored against the training data; above the threshold the diagnosis is greyed "
            "under a banner.")
if guard and guard.get("thresholds"):
    st.dataframe(pd.DataFrame([{"input": display_name(m), "threshold": round(t, 2),
                                "flagged on validation": f"{guard.get('val_flagged', {}).get(m, float('nan')):.1%}",
                                "false alarms on test": f"{guard.get('test_flagged', {}).get(m, float('nan')):.1%}"}
                               for m, t in guard["thresholds"].items()]), hide_index=True, width="stretch")
    # what the score is, for the kinds of input this model reads only
    encoded = " and ".join(w for k, w in (("image", "scans"), ("text", "notes")) if k in kinds)
    score_words = ([f"for {encoded}, how far the input lies from the training inputs (about 1 for a typical input)"]
                   if encoded else []) + (["for tabular values, how rare the combination or the most extreme value "
                                           "is"] if "tabular" in kinds else [])
    score_help = ([f"{encoded.capitalize()}: the distance to the nearest class of training inputs in the frozen "
                   "encoder's feature space, in units of the typical distance."] if encoded else []) + (
        ["Tabular values: -log10 of the probability of the combination or of the most extreme value under the "
         "training distribution."] if "tabular" in kinds else [])
    st.caption("Score: " + "; ".join(score_words) + ". Thresholds leave 1 % of held-out inputs flagged.",
               help=" ".join(score_help))
elif guard:  # fitted, but no input had enough training cases for a threshold
    st.warning("This checkpoint's out-of-distribution statistics hold no threshold for any input, so none is flagged; "
               f"`{open_model.command('guard', '--fit')}` fits them again on its training data.")
else:
    st.warning("This checkpoint carries no out-of-distribution statistics: run "
               f"`{open_model.command('guard', '--fit')}`.")
# the open model's own evaluation: the full run beside it, else its quick one (core.open_model.evaluation_dir)
found = [d / "results.json" for d in open_model.evaluation_dirs() if (d / "results.json").exists()]
if not found:
    st.caption(f"No comparison with baselines and ablations for {open_model.name} yet: `"
               f"{open_model.command('evaluate')}` makes it (`--quick` in minutes), and it shows here and in the "
               "Robustness lab.")
else:
    result = json.loads(found[0].read_text(encoding="utf-8"))
    which, same = describe.provenance(result, meta, open_model.name)
    title = "Comparison with baselines and ablations (python -m core evaluate)"
    with st.expander(title if same else title + (": a quick demonstration" if result.get("quick") else
                                                  ": an earlier model")):
        if same:  # which run, when, on which code
            st.caption(which)
        else:  # its figures differ from the table above: say why before anyone compares them
            st.info(which, icon=":material/history:")
        table, helps = report.comparison(result["rows"], result["modalities"])
        st.dataframe(table.round(1), hide_index=True, width="stretch", height=35 * (len(table) + 1) + 3,
                     column_config={c: st.column_config.Column(help=h) for c, h in helps.items()})
        st.caption(f"AUROC (%) on the {result['n_test_complete']} complete test cases with only the named modalities "
                   "given, mean over the training seeds. The Robustness lab shows accuracy, retention, rare diseases "
                   "and the figures; BENCHMARKS.md the full table with ± std.")
st.subheader("Intended use and limits")
trained_on = ("- Trained on a synthetic cohort whose images are far simpler than real radiographs; its numbers say that "
              "the method works as designed, not how it would perform on patients." if open_model.shipped else
              f"- Trained on `{spec['name']}` ({meta.get('data_size', '?')} cases, data fingerprint "
              f"`{str(meta.get('data_fingerprint', '?'))[:8]}…`): its numbers hold for data like its own test split "
              "only, not for other sites, devices or populations, and they are no clinical validation.")
next_step = ("- To use it on real data, train and evaluate your own model (`python -m core train --data …`, "
             "`python -m core evaluate`)." if open_model.shipped else
             f"- Compare it with baselines and ablations before trusting it: `{open_model.command('evaluate')}`.")
st.markdown(f"""
- **{NOTICE}**
{trained_on}
- A synthesized modality is a statistical guess of a latent representation, never a reconstruction of the
  missing test; its confidence{" and the assumed lab values are" if "tabular" in kinds else " is"} calibrated on
  validation data of the same {"cohort" if open_model.shipped else "data set"}.
{next_step}
""")
with st.expander("Configuration"):
    st.code(yaml.safe_dump(meta["config"], sort_keys=False), language="yaml")
with st.expander("Checkpoint files"):
    st.caption(f"`{shown(open_model.checkpoint)}`")
    st.code("\n".join(f"{p.name}/" if p.is_dir() else f"{p.name}  {p.stat().st_size / 2**20:.1f} MB"
                      for p in sorted(open_model.checkpoint.iterdir())))
    st.caption(f"weights sha256 {meta.get('weights_sha256', 'not recorded')}")
    st.download_button("Download meta.json", json.dumps(meta, indent=1), "meta.json", key="meta")
