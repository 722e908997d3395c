"""Explanation review: reviewers rate explanations blind to the method that made them."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.errors import RobustMDiffError
from core.explain.explanation import Explanation, explain_case
from core.explain.render import legend_html, note_html, overlay
from core.review.stats import agreement, per_method
from core.review.store import DEMO_CODE, SCALES, Item, ReviewStore, reviewer_code
from pages.common import fail, get_demo_cases, get_predictor, load_demo_case, notice

METHODS = ["integrated_gradients", "gradient_x_input", "shap", "random"]
LIKERT = {1: "1 · not at all", 2: "2", 3: "3", 4: "4", 5: "5 · completely"}
QUESTIONS = {"relevance": "The highlighted evidence is clinically relevant to the prediction.",
             "usefulness": "The explanation would help me check the prediction.",
             "trust": "After seeing it, I would trust this prediction."}

st.title("Explanation review")
notice()


@st.cache_resource(show_spinner=False)
def store() -> ReviewStore:
    return ReviewStore()


@st.cache_resource(show_spinner="Computing the explanation…", max_entries=256)
def explanation(row: int, method: str) -> Explanation:
    return explain_case(get_predictor(), load_demo_case(row), method=method)


def sign_in() -> None:
    if not reviewer_code():
        st.warning("Reviewing is closed: the study's reviewer code is not configured (environment variable "
                   "RMD_REVIEWER_CODE).")
        st.stop()
    with st.form("sign_in"):
        name = st.text_input("Your reviewer name", key="reviewer_name")
        code = st.text_input("Reviewer code", type="password", key="reviewer_code")
        if reviewer_code() == DEMO_CODE:
            st.caption(f"Demo set-up: the reviewer code is `{DEMO_CODE}` (set RMD_REVIEWER_CODE for a real study).")
        if st.form_submit_button("Sign in"):
            try:
                ReviewStore.check_code(code)
                if not name.strip():
                    raise RobustMDiffError("please give a reviewer name")
                st.session_state["reviewer"] = name.strip()
                st.rerun()
            except RobustMDiffError as e:
                st.error(str(e))
    st.stop()


if "reviewer" not in st.session_state:
    sign_in()
reviewer = st.session_state["reviewer"]
demos = {d.case_id: d for d in get_demo_cases()}
queue = ReviewStore.queue(reviewer, list(demos), METHODS)
rate_tab, results_tab = st.tabs(["Rate", "Results"])

with rate_tab:
    rated = store().rated(reviewer)
    st.progress(len(rated) / len(queue), text=f"{reviewer}: {len(rated)} of {len(queue)} rated")
    pending = [i for i, item in enumerate(queue) if item not in rated]
    default = pending[0] if pending else 0
    pos = st.number_input("Item", 1, len(queue), default + 1, key=f"pos_{len(rated)}") - 1
    item: Item = queue[pos]
    demo = demos[item.case_id]
    case = load_demo_case(demo.row)
    try:
        exp = explanation(demo.row, item.method)
    except Exception as e:  # noqa: BLE001
        fail(e)
        st.stop()
    st.markdown(f"**Case {item.case_id}** · model prediction: **{exp.target}** "
                f"({exp.prediction.probabilities[exp.target]:.0%}). Explanation method: hidden.")
    c1, c2 = st.columns([1, 1])
    for name, heat in exp.image.items():
        c1.image(overlay(case.inputs[name].display(), heat, 0.55), caption="scan with heatmap", width=360)
    for name, words in exp.note.items():
        c2.html(legend_html() + note_html(case.inputs[name], words))
    for name, rows in exp.labs.items():
        shown = [r for r in rows if r.value is not None]
        fig = go.Figure(go.Bar(y=[f"{r.label} {r.value:.3g} {r.unit} {r.flag}" for r in shown], x=[r.score for r in shown],
                               orientation="h"))
        fig.update_layout(height=80 + 30 * len(shown), yaxis=dict(autorange="reversed"), title="lab attributions",
                          margin=dict(l=10, r=10, t=30, b=10))
        st.plotly_chart(fig, width="stretch", key=f"labs_{pos}")
    saved = store().rating(reviewer, item) or {}
    with st.form(f"rate_{pos}"):
        answers = {s: st.radio(QUESTIONS[s], list(LIKERT), index=saved.get(s, 3) - 1, format_func=LIKERT.get,
                               horizontal=True, key=f"{s}_{pos}") for s in SCALES}
        comment = st.text_area("Comment (optional)", value=saved.get("comment", ""), key=f"comment_{pos}")
        if st.form_submit_button("Save rating", type="primary"):
            try:
                store().save(reviewer, item, comment=comment, **answers)
                st.success("Saved.")
                st.rerun()
            except RobustMDiffError as e:
                st.error(str(e))
    if st.button("Sign out", key="sign_out"):
        del st.session_state["reviewer"]
        st.rerun()

with results_tab:
    ratings = store().all_ratings()
    st.caption(f"{len(ratings)} ratings from {len({r['reviewer'] for r in ratings})} reviewers.")
    if ratings:
        summary = per_method(ratings)
        fig = go.Figure()
        for scale in SCALES:
            sub = summary[summary.scale == scale]
            fig.add_trace(go.Bar(x=sub.method, y=sub["mean"], name=scale,
                                 error_y=dict(type="data", symmetric=False, array=sub.ci_high - sub["mean"],
                                              arrayminus=sub["mean"] - sub.ci_low)))
        fig.update_layout(barmode="group", yaxis=dict(range=[0, 5.5], title="mean rating (95 % CI)"))
        st.plotly_chart(fig, width="stretch", key="ratings_chart")
        st.dataframe(summary.round(2), hide_index=True)
        alpha = agreement(ratings)
        st.markdown("Inter-rater agreement (Krippendorff's α, ordinal): " +
                    ", ".join(f"{k} {v:.2f}" if v == v else f"{k} n/a (needs items rated by two reviewers)"
                              for k, v in alpha.items()))
        st.download_button("Export ratings (CSV)", pd.DataFrame(ratings).to_csv(index=False), "ratings.csv",
                           mime="text/csv", key="export")
