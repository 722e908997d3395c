"""Robustness lab: every method under every availability pattern, and a live demo on one case."""

from __future__ import annotations

import json

import pandas as pd
import plotly.express as px
import streamlit as st

from core.evaluation import figures
from core.evaluation.methods import methods_for
from core.evaluation.patterns import availability_patterns, pattern_name
from core.paths import ASSETS
from pages.common import fail, get_demo_cases, get_predictor, load_demo_case, notice

st.title("Robustness lab")
notice()
predictor = get_predictor()
names = [n for n, _ in predictor.modalities]


def show_results(result: dict, key: str) -> None:
    rows, labels = result["rows"], result["methods"]
    st.caption(f"{result['n_test_complete']} complete test cases; seeds {result['seeds']}; "
               f"{result['seconds'] / 60:.0f} min on {result['machine']['cpus']} CPUs ({result['device']}).")
    st.plotly_chart(figures.auroc_by_pattern(rows, result["modalities"], labels), width="stretch", key=f"{key}_heat")
    c1, c2 = st.columns(2)
    c1.plotly_chart(figures.retention_curve(rows, result["modalities"], labels), width="stretch", key=f"{key}_ret")
    c2.plotly_chart(figures.reliability_diagram(result["reliability"], labels, methods=["robustmdiff", "no_diffusion",
                    "early_zero", "masked_attention", "late_fusion"]), width="stretch", key=f"{key}_rel")
    st.dataframe(pd.DataFrame(result["targets"]), hide_index=True)
    with st.expander("Full table (markdown, as in BENCHMARKS.md)"):
        from core.evaluation.evaluate import markdown
        st.markdown(markdown(result))


shipped, quick, live = st.tabs(["Shipped evaluation", "Run a quick evaluation", "Live demo on one case"])
with shipped:
    path = ASSETS / "evaluation" / "results.json"
    if path.exists():
        show_results(json.loads(path.read_text()), "shipped")
    else:
        st.info("No shipped evaluation results yet: run `python -m core evaluate --out assets/evaluation`.")

with quick:
    st.markdown("Trains the chosen methods on a 600-case cohort for a few epochs and scores them: a demonstration "
                "of the harness in minutes, not a benchmark.")
    options = [m.name for m in methods_for(names)]
    chosen = st.multiselect("Methods (RobustMDiff is always included)", options,
                            default=["early_zero", "dropout_0.5", "masked_attention"], key="quick_methods")
    if st.button("Run quick evaluation", type="primary", key="run_quick"):
        bar = st.progress(0.0, text="starting…")
        try:
            from core.evaluation.evaluate import evaluate

            result = evaluate(methods=",".join(chosen) or "robustmdiff", quick=True, progress=False,
                              on_step=lambda i, n, name: bar.progress(i / n, text=f"training {name} ({i + 1}/{n})"))
            bar.progress(1.0, text="done")
            st.session_state["quick_result"] = result
        except Exception as e:  # noqa: BLE001
            fail(e)
    if "quick_result" in st.session_state:
        show_results(st.session_state["quick_result"], "quick")

with live:
    demos = get_demo_cases()
    choice = st.selectbox("Case", [d.label for d in demos], key="live_case")
    demo = demos[[d.label for d in demos].index(choice)]
    case = load_demo_case(demo.row)
    rows = []
    try:
        for pattern in availability_patterns(len(names)):
            absent = [n for n, keep in zip(names, pattern) if not keep]
            p = predictor.predict(case, absent=absent)
            rows.append({"available": pattern_name(pattern, names), "missing": len(absent), "prediction": p.prediction,
                         f"p({demo.diagnosis})": p.probabilities[demo.diagnosis],
                         **{f"confidence {m}": s["confidence"] for m, s in p.synthesized.items()}})
    except Exception as e:  # noqa: BLE001
        fail(e)
        st.stop()
    df = pd.DataFrame(rows)
    st.markdown(f"True diagnosis: **{demo.diagnosis}**. Modalities are removed one pattern at a time.")
    fig = px.bar(df, x="available", y=f"p({demo.diagnosis})", color="prediction", range_y=[0, 1],
                 title="Probability of the true diagnosis as modalities go missing")
    st.plotly_chart(fig, width="stretch", key="live_chart")
    st.dataframe(df.round(3), hide_index=True)
