"""Explanation review: reviewers rate explanations blind to the model and the method that made them.

Sign-in, PINs, throttling and the admin gate live in core.review.auth; the ratings and the sessions in
core.review.store and core.review.sessions; the models compared (RobustMDiff and its comparison models) in
core.review.models; the explanations, computed once and prepared ahead, in core.review.prepared. The study
admin's results, exports and model line-up are drawn by pages/review_admin.py. This page only draws.
"""

from __future__ import annotations

import logging

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from core.demo import DemoCase, study_cases
from core.errors import RobustMDiffError
from core.names import display_name
from core.explain.explanation import METHODS, Explanation
from core.explain.render import legend_html, note_html, overlay
from core.review import auth
from core.review.models import Lineup, Study, cohort_spec, review_models, study_of, train_command
from core.review.prepared import BACKGROUND, PreparedExplanations, study_explanations, warm_all, warm_enabled
from core.review.sessions import Session, SignedOut, reviewer_code
from core.review.store import DEMO_CODE, SCALES, Item, ReviewStore
from pages.common import (fail, get_cohort, get_open_model, get_predictor, get_service, inside_app, load_demo_case,
                          notice)
from pages.review_admin import results_view

LIKERT = {1: "1 · not at all", 2: "2", 3: "3", 4: "4", 5: "5 · completely"}
QUESTIONS = {"relevance": "The highlighted evidence is clinically relevant to the prediction.",
             "usefulness": "The explanation would help me check the prediction.",
             "trust": "After seeing it, I would trust this prediction."}
TOKEN = "reviewer_token"  # query parameter: a one-use reload token (replaced at each reload), never the session
LOOK_AHEAD = 3
log = logging.getLogger(__name__)

inside_app()
st.title("Explanation review")
notice()


@st.cache_resource(show_spinner=False)
def store() -> ReviewStore:
    return ReviewStore()


@st.cache_resource(show_spinner=False)
def get_study_cases() -> list[DemoCase]:
    """The study's cases: never one of the Case explorer's demo cases (core/demo.py: why)."""
    return study_cases(get_cohort())


@st.cache_resource(show_spinner=False)
def _study_spec() -> dict:
    return cohort_spec(get_cohort())


@st.cache_resource(show_spinner=False)
def get_study() -> Study:
    """The study runs on the open model and its data (issue 26); the database notes which, for the export."""
    study = study_of(get_open_model(), get_cohort().manifest.to_csv(index=False))
    store().note_study(study.key, study.describe())
    return study


def lineup() -> Lineup:
    """The models of the study, read afresh on each run (a few small JSON files), so that a comparison
    checkpoint trained while the app runs joins the queue at the next page load. A model that does not
    read the study cohort's classes, modalities and labs is left out (the admin sees why)."""
    found = review_models(_study_spec(), get_study())
    _report_missing(tuple(found.missing), tuple(found.skipped))
    return found


@st.cache_resource(show_spinner=False)
def _report_missing(missing: tuple[str, ...], skipped: tuple[tuple[str, str], ...]) -> None:
    """Once per process, in the server log (reviewers must not see model names)."""
    for name in missing:
        log.warning("review study: no checkpoint of %s; train it with: %s", name, train_command(name, get_study()))
    for path, why in skipped:
        log.warning("review study: not using %s (%s)", path, why)


@st.cache_resource(show_spinner=False)
def _prepared(_lineup: Lineup, key: tuple, case_ids: tuple[str, ...]) -> PreparedExplanations:
    open_checkpoint = get_open_model().checkpoint.resolve()  # already loaded for every page: not loaded twice
    loaded = {m.name: get_predictor() for m in _lineup.models if m.path.resolve() == open_checkpoint}
    # review work queues in the app's one pool, behind what people wait for (moved up when someone waits)
    return study_explanations(_lineup, get_cohort(), loaded, case_ids=case_ids, pool=get_service())


def prepared(found: Lineup | None = None) -> PreparedExplanations:
    """Keyed on the line-up and the case set: another set of cases never reuses prepared items."""
    found = found or lineup()
    return _prepared(found, found.key(), tuple(c.case_id for c in get_study_cases()))


@st.cache_resource(show_spinner=False, max_entries=64)
def heat_image(case_id: str, model: str, method: str, row: int) -> np.ndarray | None:
    """The scan with its heatmap, blended once per item (read-only, shared by every session)."""
    exp = prepared().get((row, case_id, model, method))
    case = load_demo_case(row)
    return next((overlay(case.inputs[n].display(), heat, 0.55) for n, heat in exp.image.items()), None)


# ---- sign-in ---------------------------------------------------------------------------------------------
def _client() -> str:
    """This browser's connection, for throttling guesses (core.review.auth.client_key)."""
    return auth.client_key(st.context.ip_address, st.context.headers)


def _signed_in(session: Session) -> None:
    st.session_state["reviewer"] = session.reviewer
    st.session_state["review_session"] = session.id  # the session id stays on the server
    st.query_params[TOKEN] = store().reload_token(session.id)


def _forget_sign_in() -> None:
    for key in ("reviewer", "review_session"):
        st.session_state.pop(key, None)
    st.query_params.pop(TOKEN, None)


def _on_sign_in() -> None:
    ss = st.session_state
    try:
        _signed_in(auth.sign_in(store(), ss.get("reviewer_name", ""), ss.get("reviewer_code", ""),
                                ss.get("reviewer_pin", ""), ss.get("reviewer_pin_again", ""), client=_client()))
        ss.pop("review_error", None)
    except RobustMDiffError as e:
        ss["review_error"] = str(e)
    ss["reviewer_pin"] = ss["reviewer_pin_again"] = ""  # never left in the form


def _on_sign_out(session: str) -> None:
    auth.sign_out(store(), session)
    _forget_sign_in()


def current_reviewer() -> str | None:
    """The signed-in reviewer: this session's, re-validated on every run, else the one a reload token in
    the URL stands for (after a reload; the token is spent and replaced)."""
    sid = st.session_state.get("review_session")
    if sid:
        session = store().session(sid)
        if session is None:
            _forget_sign_in()
            st.info("You were signed out (signed out elsewhere, your PIN was reset, the study code changed, or "
                    "you were away too long). Please sign in again.")
            return None
        if TOKEN not in st.query_params:  # e.g. back from another page: keep a reload signed in
            st.query_params[TOKEN] = store().reload_token(sid)
        st.session_state["reviewer"] = session.reviewer
        return session.reviewer
    token = st.query_params.get(TOKEN)
    if not token:
        return None
    session = store().exchange_reload(token)
    if session:
        _signed_in(session)
        return session.reviewer
    st.query_params.pop(TOKEN, None)
    st.info("Your sign-in link is no longer valid (it works for one reload, soon after you last used the page; "
            "or you signed out, or the study code changed). Please sign in again.")
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
                      help=f"First time here: choose a PIN of at least {auth.MIN_PIN} characters and type it "
                           "again under Repeat PIN. It keeps your ratings yours: nobody can sign in under your "
                           "name without it.")
        c2.text_input("Repeat PIN (first time here, or after a PIN reset)", type="password", key="reviewer_pin_again")
        if reviewer_code() == DEMO_CODE and auth.on_this_machine(st.context.ip_address, st.context.headers):
            st.caption(f"Demo set-up: the reviewer code is `{DEMO_CODE}` (set RMD_REVIEWER_CODE for a real study).")
        st.form_submit_button("Sign in", on_click=_on_sign_in)
    if "review_error" in st.session_state:
        st.error(st.session_state["review_error"])
    found = lineup()
    if warm_enabled() and found.models:  # while the reviewer types, the first explanation warms the model up
        first = get_study_cases()[0]
        prepared(found).prefetch([(first.row, first.case_id, found.names[0], METHODS[0])], BACKGROUND)


# ---- rating ----------------------------------------------------------------------------------------------
def _on_save(reviewer: str, item: Item, pos: int) -> None:
    ss = st.session_state
    try:
        answers = {s: ss.get(f"{s}_{pos}") for s in SCALES}
        store().save(reviewer, item, comment=ss.get(f"comment_{pos}") or "", session=ss.get("review_session"),
                     **answers)
        ss["review_saved"] = pos
    except SignedOut as e:  # ended elsewhere: back to the sign-in form, which shows why
        _forget_sign_in()
        ss["review_error"] = str(e)
    except RobustMDiffError as e:
        ss["review_error"] = str(e)


def show_item(item: Item, row: int, exp: Explanation, pos: int) -> None:
    """One item, blinded: nothing drawn (text, captions, element keys) names its model or method, and of
    the model's outputs only the predicted class is shown, without its probability (which differs between
    models on the same case, so it would tell a reviewer which model this is)."""
    case = load_demo_case(row)
    st.markdown(f"**Case {item.case_id}** · model prediction: **{display_name(exp.target)}**. "
                "Model and explanation method: hidden.")
    c1, c2 = st.columns([1, 1])
    image = heat_image(item.case_id, item.model, item.method, row)
    if image is not None:
        c1.image(image, caption="scan with heatmap", width=360)
    for name, words in exp.note.items():
        c2.html(legend_html() + note_html(case.inputs[name], words))
    for i, (group, rows) in enumerate(exp.labs.items()):  # one chart per table of the data (several in some)
        shown = [r for r in rows if r.value is not None]
        fig = go.Figure(go.Bar(y=[f"{r.label} {r.value:.3g} {r.unit} {r.flag}" for r in shown],
                               x=[r.score for r in shown], orientation="h"))
        title = "Lab results ranked by influence" if len(exp.labs) == 1 else f"{group}: ranked by influence"
        fig.update_layout(height=80 + 30 * len(shown), yaxis=dict(autorange="reversed"), title=title,
                          margin=dict(l=10, r=10, t=30, b=10))
        st.plotly_chart(fig, width="stretch", key=f"labs_{pos}" if i == 0 else f"labs_{pos}_{i}")


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
    if "review_session" not in st.session_state:  # a save found the session ended: the whole page signs in again
        st.rerun()
    found = lineup()
    if not found.models:
        st.error("The study has no model to explain: the open checkpoint is missing or cannot explain the study's "
                 "cases. Ask the study admin.")
        return
    demos = {d.case_id: d for d in get_study_cases()}
    queue = ReviewStore.queue(reviewer, list(demos), list(METHODS), found.names)
    keys = [(demos[i.case_id].row, i.case_id, i.model, i.method) for i in queue]
    rated = store().rated(reviewer) & set(queue)  # (not items of a model no longer in the study)
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
            exp = prepared(found).get(keys[pos])
    except Exception as e:  # noqa: BLE001
        fail(e)
        return
    show_item(queue[pos], keys[pos][0], exp, pos)
    questions(reviewer, queue[pos], pos)
    if warm_enabled():  # what this reviewer needs next; every other item only on a server set up for it
        prepared(found).prefetch([keys[i] for i in pending if i > pos][:LOOK_AHEAD])
        if warm_all():
            prepared(found).warm(keys)


def rate_tab() -> None:
    reviewer = current_reviewer()
    if reviewer is None:
        sign_in_form()
        return
    c1, c2 = st.columns([4, 1])
    c1.caption(f"Signed in as **{reviewer}**. Do not share this page's address: it signs you in once, on a reload.")
    c2.button("Sign out", key="sign_out", on_click=_on_sign_out, args=(st.session_state["review_session"],),
              help="Ends your sign-in here and in your other browsers.")
    rate_view(reviewer)


try:  # a model opened without its data (RMD_CHECKPOINT without RMD_DATA, data moved): no cases to rate
    get_study()
except RobustMDiffError as e:
    st.warning(f"The review study rates explanations of the open model's own cases, and they are not here: {e}")
    st.stop()

if auth.admin_enabled():
    rate, results = st.tabs(["Rate", "Results (study admin)"])
    with rate:
        rate_tab()
    with results:
        results_view(store(), get_study(), lineup, _client)
else:
    rate_tab()
    st.caption("Results and export are switched off. To enable them, start the app with a study-admin code "
               "in the environment variable RMD_ADMIN_CODE (different from the reviewer code); only someone "
               "who has it can open the results, so reviewers stay blind to the models and methods.")
    found = lineup()
    if found.missing:  # a count only: reviewers must not learn model names
        st.caption(f"This study runs with {len(found.models)} of its {len(found.models) + len(found.missing)} "
                   "models; the study admin sees which are missing, and how to train them, under Results.")
