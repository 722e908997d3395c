"""Explanation review: reviewers rate explanations blind to the method that made them.

Sign-in, tokens, PINs and the admin gate live in core.review.auth; the ratings in core.review.store; the
explanations, computed once and prepared ahead, in core.review.prepared. This page only draws.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from core.errors import RobustMDiffError
from core.explain.explanation import METHODS, Explanation, explain_case
from core.explain.render import legend_html, note_html, overlay
from core.review import auth
from core.review.export import ratings_csv
from core.review.prepared import BACKGROUND, PreparedExplanations, default_folder, fingerprint, warm_enabled
from core.review.stats import agreement, per_method
from core.review.store import DEMO_CODE, SCALES, Item, ReviewStore, reviewer_code
from pages.common import fail, get_cohort, get_demo_cases, get_predictor, load_demo_case, notice

LIKERT = {1: "1 · not at all", 2: "2", 3: "3", 4: "4", 5: "5 · completely"}
QUESTIONS = {"relevance": "The highlighted evidence is clinically relevant to the prediction.",
             "usefulness": "The explanation would help me check the prediction.",
             "trust": "After seeing it, I would trust this prediction."}
TOKEN = "reviewer_token"  # query parameter that keeps a reviewer signed in across reloads
LOOK_AHEAD = 3

st.title("Explanation review")
notice()


@st.cache_resource(show_spinner=False)
def store() -> ReviewStore:
    return ReviewStore()


@st.cache_resource(show_spinner=False)
def prepared() -> PreparedExplanations:
    predictor, cohort = get_predictor(), get_cohort()
    key = fingerprint(predictor.meta, cohort.manifest.to_csv(index=False))
    # runs in the background thread too: only plain core calls, no Streamlit
    return PreparedExplanations(default_folder(key), lambda row, method: explain_case(predictor, cohort.load(row),
                                                                                    method=method))


@st.cache_resource(show_spinner=False, max_entries=64)
def heat_image(case_id: str, method: str, row: int) -> np.ndarray | None:
    """The scan with its heatmap, blended once per item (read-only, shared by every session)."""
    exp = prepared().get((row, case_id, method))
    case = load_demo_case(row)
    return next((overlay(case.inputs[n].display(), heat, 0.55) for n, heat in exp.image.items()), None)


# ---- sign-in ---------------------------------------------------------------------------------------------
def _signed_in(name: str) -> None:
    st.session_state["reviewer"] = name
    st.query_params[TOKEN] = auth.issue_token(store(), name)


def _on_sign_in() -> None:
    ss = st.session_state
    try:
        _signed_in(auth.sign_in(store(), ss.get("reviewer_name", ""), ss.get("reviewer_code", ""),
                                ss.get("reviewer_pin", ""), ss.get("reviewer_pin_again", "")))
        ss.pop("review_error", None)
    except RobustMDiffError as e:
        ss["review_error"] = str(e)
    ss["reviewer_pin"] = ss["reviewer_pin_again"] = ""  # never left in the form


def _on_sign_out(name: str) -> None:
    auth.sign_out(store(), name)
    st.session_state.pop("reviewer", None)
    st.query_params.pop(TOKEN, None)


def current_reviewer() -> str | None:
    """The signed-in reviewer: from this session, else from a valid token in the URL (after a reload)."""
    if "reviewer" in st.session_state:
        if TOKEN not in st.query_params:  # e.g. back from another page: keep a reload signed in
            st.query_params[TOKEN] = auth.issue_token(store(), st.session_state["reviewer"])
        return st.session_state["reviewer"]
    token = st.query_params.get(TOKEN)
    if not token:
        return None
    name = auth.read_token(store(), token)
    if name:
        st.session_state["reviewer"] = name
        return name
    st.query_params.pop(TOKEN, None)
    st.info("Your sign-in link is no longer valid (signed out, expired, or the study code changed). "
            "Please sign in again.")
    return None


def sign_in_form() -> None:
    if not reviewer_code():
        st.warning("Reviewing is closed: the study's reviewer code is not configured (environment variable "
                   "RMD_REVIEWER_CODE).")
        return
    with st.form("sign_in"):
        st.text_input("Your reviewer name", key="reviewer_name", max_chars=80)
        st.text_input("Reviewer code (shared by the study)", type="password", key="reviewer_code")
        c1, c2 = st.columns(2)
        c1.text_input("Your PIN", type="password", key="reviewer_pin",
                      help=f"First sign-in: choose a PIN of at least {auth.MIN_PIN} characters. It keeps your "
                           "ratings yours: nobody can sign in under your name without it.")
        c2.text_input("Repeat PIN (first sign-in only)", type="password", key="reviewer_pin_again")
        if reviewer_code() == DEMO_CODE:
            st.caption(f"Demo set-up: the reviewer code is `{DEMO_CODE}` (set RMD_REVIEWER_CODE for a real study).")
        st.form_submit_button("Sign in", on_click=_on_sign_in)
    if "review_error" in st.session_state:
        st.error(st.session_state["review_error"])
    if warm_enabled():  # while the reviewer types, the first explanation in this process warms the model up
        first = get_demo_cases()[0]
        prepared().prefetch([(first.row, first.case_id, METHODS[0])], BACKGROUND)


# ---- rating ----------------------------------------------------------------------------------------------
def _on_save(reviewer: str, item: Item, pos: int) -> None:
    ss = st.session_state
    try:
        answers = {s: ss.get(f"{s}_{pos}") for s in SCALES}
        store().save(reviewer, item, comment=ss.get(f"comment_{pos}") or "", **answers)
        ss["review_saved"] = pos
    except RobustMDiffError as e:
        ss["review_error"] = str(e)


def show_item(item: Item, row: int, exp: Explanation) -> None:
    case = load_demo_case(row)
    st.markdown(f"**Case {item.case_id}** · model prediction: **{exp.target}** "
                f"({exp.prediction.probabilities[exp.target]:.0%}). Explanation method: hidden.")
    c1, c2 = st.columns([1, 1])
    image = heat_image(item.case_id, item.method, row)
    if image is not None:
        c1.image(image, caption="scan with heatmap", width=360)
    for name, words in exp.note.items():
        c2.html(legend_html() + note_html(case.inputs[name], words))
    for rows in exp.labs.values():
        shown = [r for r in rows if r.value is not None]
        fig = go.Figure(go.Bar(y=[f"{r.label} {r.value:.3g} {r.unit} {r.flag}" for r in shown],
                               x=[r.score for r in shown], orientation="h"))
        fig.update_layout(height=80 + 30 * len(shown), yaxis=dict(autorange="reversed"), title="lab attributions",
                          margin=dict(l=10, r=10, t=30, b=10))
        st.plotly_chart(fig, width="stretch", key=f"labs_{item.case_id}_{item.method}")


def questions(reviewer: str, item: Item, pos: int) -> None:
    """Likert questions that start unanswered (or at this reviewer's saved answers); Save once all are set."""
    saved = store().rating(reviewer, item) or {}
    answers = [st.radio(QUESTIONS[s], list(LIKERT), index=saved[s] - 1 if s in saved else None,
                        format_func=LIKERT.get, horizontal=True, key=f"{s}_{pos}") for s in SCALES]
    st.text_area("Comment (optional)", value=saved.get("comment", ""), key=f"comment_{pos}", max_chars=5000)
    complete = all(a is not None for a in answers)
    st.button("Save rating", type="primary", disabled=not complete, on_click=_on_save, args=(reviewer, item, pos),
              key=f"save_{pos}")
    if not complete:
        st.caption("Answer all three questions to save.")


@st.fragment
def rate_view(reviewer: str) -> None:
    """The queue: a fragment, so answering a question reruns only this part of the page."""
    demos = {d.case_id: d for d in get_demo_cases()}
    queue = ReviewStore.queue(reviewer, list(demos), list(METHODS))
    keys = [(demos[i.case_id].row, i.case_id, i.method) for i in queue]
    rated = store().rated(reviewer)
    st.progress(len(rated) / len(queue), text=f"{reviewer}: {len(rated)} of {len(queue)} rated")
    if "review_saved" in st.session_state:
        st.success(f"Saved your rating of item {st.session_state.pop('review_saved') + 1}.")
    if "review_error" in st.session_state:
        st.error(st.session_state.pop("review_error"))
    pending = [i for i, item in enumerate(queue) if item not in rated]
    if not pending:
        st.success("You have rated every item: thank you. You can still go back and change a rating.")
    pos = st.number_input("Item", 1, len(queue), (pending[0] if pending else 0) + 1, key=f"pos_{len(rated)}") - 1
    try:
        with st.spinner("Preparing this explanation (only the first reviewer to reach it waits)…"):
            exp = prepared().get(keys[pos])
    except Exception as e:  # noqa: BLE001
        fail(e)
        return
    show_item(queue[pos], keys[pos][0], exp)
    questions(reviewer, queue[pos], pos)
    if warm_enabled():  # what this reviewer needs next, then (once per process) every other item
        prepared().prefetch([keys[i] for i in pending if i > pos][:LOOK_AHEAD])
        prepared().warm(keys)


# ---- results (study admin only) ----------------------------------------------------------------------------
def _on_admin() -> None:
    try:
        auth.check_admin_code(st.session_state.get("admin_code", ""))
        st.session_state["review_admin"] = True
        st.session_state.pop("admin_error", None)
    except RobustMDiffError as e:
        st.session_state["admin_error"] = str(e)
    st.session_state["admin_code"] = ""


def results_view() -> None:
    if not st.session_state.get("review_admin"):
        st.caption("Results reveal which method made each explanation, so only the study admin sees them.")
        with st.form("admin"):
            st.text_input("Study-admin code", type="password", key="admin_code")
            st.form_submit_button("Open results", on_click=_on_admin)
        if "admin_error" in st.session_state:
            st.error(st.session_state["admin_error"])
        return
    pin_reset_view()
    ratings = store().all_ratings()
    st.caption(f"{len(ratings)} ratings from {len({r['reviewer'] for r in ratings})} reviewers.")
    if not ratings:
        return
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
    st.download_button("Export ratings (CSV)", ratings_csv(ratings), "ratings.csv", mime="text/csv", key="export")


def _on_reset_pin() -> None:
    name = st.session_state.get("reset_who")
    if name:
        store().reset_pin(name)
        st.session_state["admin_note"] = f"{name} chooses a new PIN at their next sign-in; their ratings stay."


def pin_reset_view() -> None:
    """A forgotten PIN: the admin clears it and the reviewer sets a new one at their next sign-in."""
    names = store().reviewer_names()
    if not names:
        return
    with st.expander("Reviewer forgot their PIN"):
        st.selectbox("Reviewer", names, index=None, key="reset_who")
        st.button("Reset PIN", key="reset_pin", on_click=_on_reset_pin)
        st.caption("Ask them to sign in right away: until they do, anyone with the reviewer code could claim "
                   "the name.")
        if "admin_note" in st.session_state:
            st.success(st.session_state.pop("admin_note"))


def rate_tab() -> None:
    reviewer = current_reviewer()
    if reviewer is None:
        sign_in_form()
        return
    c1, c2 = st.columns([4, 1])
    c1.caption(f"Signed in as **{reviewer}**. This page's address keeps you signed in; do not share it.")
    c2.button("Sign out", key="sign_out", on_click=_on_sign_out, args=(reviewer,))
    rate_view(reviewer)


if auth.admin_enabled():
    rate, results = st.tabs(["Rate", "Results (study admin)"])
    with rate:
        rate_tab()
    with results:
        results_view()
else:
    rate_tab()
    st.caption("Results and export are switched off. To enable them, start the app with a study-admin code "
               "in the environment variable RMD_ADMIN_CODE (different from the reviewer code); only someone "
               "who has it can open the results, so reviewers stay blind to the methods.")
