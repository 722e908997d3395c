"""What every page shares: the open model loaded once (core/open_model.py: RMD_CHECKPOINT, RMD_DATA), its demo
cases, charts, and error display.

Not a page itself (app.py lists the pages). All work happens in `core`; this only caches and draws.
"""

from __future__ import annotations

import time
import uuid

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from core.data.dataset import CaseInputs, Dataset
from core.data.readers import Scan
from core.demo import DemoCase, demo_cases
from core.errors import RobustMDiffError
from core.explain.render import colour_view
from core.inference import Predictor
from core.prediction import Prediction
from core.names import display_name
from core.open_model import OpenModel
from core.pool_job import Job
from core.pool_threads import warm_up_enabled
from core.serve import ModelService

NOTICE = "Research software, not a medical device: not for diagnosis or treatment decisions."


@st.cache_resource(show_spinner=False)
def get_open_model() -> OpenModel:
    """The checkpoint this server opened (RMD_CHECKPOINT, else the shipped one) and its data (RMD_DATA, else the
    data it was trained on); a folder that is not a checkpoint raises a RobustMDiffError app.py shows."""
    return OpenModel.from_environment()


@st.cache_resource(show_spinner="Loading the model…")
def get_predictor() -> Predictor:
    """One model for every session; inference uses no shared mutable state, so sessions may predict at once."""
    return Predictor.load(get_open_model().checkpoint)


def session_key() -> tuple[str, str] | None:
    """This browser session, as the worker pool knows it (None outside a page run): Streamlit's session id,
    by which the server knows whether the browser is still connected, and an id of this session's state
    (AppTest gives every session the same session id)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx(suppress_warning=True)
    if ctx is None:
        return None
    return ctx.session_id, st.session_state.setdefault("_pool_session", uuid.uuid4().hex)


def session_alive(key: tuple[str, str]) -> bool:
    """Whether that browser is still connected (its queued model work is dropped once it is not)."""
    from streamlit.runtime import Runtime

    return not Runtime.exists() or bool(Runtime.instance().is_active_session(key[0]))


@st.cache_resource(show_spinner="Starting the model workers…")
def get_service() -> ModelService:
    """The worker pool every session's model work goes through (core/serve.py: why), warmed up in the
    background on a demo case as soon as the first page opens."""
    service = ModelService(get_predictor(), session_of=session_key, session_alive=session_alive)
    demos = get_demo_cases() if warm_up_enabled() and has_demo_cases() else []  # no data here: no warm-up case
    if demos:
        service.warm_up(load_demo_case(demos[0].row))
    return service


def wait_for(job: Job):
    """The job's result; while it waits, a line says where it is (queue position, stage)."""
    if not job.done():
        line = st.empty()
        while not job.done():
            line.caption(f":material/hourglass_top: {job.status()}")
            time.sleep(0.15)
        line.empty()
    return job.result()


@st.cache_resource(show_spinner="Opening the data of the demo cases…")
def get_cohort() -> Dataset:
    """The open model's data (the embedded cohort for the shipped model); RobustMDiffError when there is none
    here (callers say so: `has_demo_cases`)."""
    return get_open_model().dataset()


def has_demo_cases() -> bool:
    """Whether demo cases can be offered: the open model's data is on this machine and readable."""
    try:
        return bool(get_demo_cases())
    except RobustMDiffError:
        return False


def no_demo_cases_text() -> str:
    """Why there are no demo cases, and what to do."""
    try:
        get_cohort()
    except RobustMDiffError as e:
        return str(e)
    return "This data has no complete test case to show."


@st.cache_resource(show_spinner=False)
def get_demo_cases() -> list[DemoCase]:
    """Complete test cases of the open model's data, typical and rare diagnoses (core/demo.py)."""
    return demo_cases(get_cohort())


@st.cache_resource(show_spinner=False, max_entries=64)
def load_demo_case(row: int) -> CaseInputs:
    return get_cohort().load(row)


@st.cache_resource(show_spinner=False, max_entries=64)
def demo_colours(row: int) -> dict[str, np.ndarray]:
    """The colour photographs among a demo case's images (core/explain/render.py colour_view), by modality:
    drawn in colour though the model reads grey."""
    ds, case = get_cohort(), load_demo_case(row)
    views = {n: colour_view(ds.path(row, n), scan) for n, scan in case.inputs.items() if isinstance(scan, Scan)}
    return {n: v for n, v in views.items() if v is not None}


def demo_source_text() -> str:
    """Where the demo cases come from, in words: the open model's own data, never the cohort for another model."""
    open_model = get_open_model()
    if open_model.shipped and open_model.data is None:
        return "test split of the embedded cohort"
    return f"test split of {get_predictor().spec.name}"


def inside_app() -> None:
    """Called first by every page. A deep link opened before app.py ever ran in this server (e.g. right after
    `make run`) makes Streamlit fall back to its old multipage mode, which runs the page file alone under a
    list of every file in pages/ (common.py included). Leave that mode, as st.navigation itself does, and run
    again: app.py then runs and opens the page asked for. Once per process: the mode, once left, stays left
    in a server (AppTest alone re-enters it before every run, and a rerun there would drop the click)."""
    global _navigation_checked
    if _navigation_checked:
        return
    _navigation_checked = True
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


_navigation_checked = False


def notice() -> None:
    st.caption(f":material/warning: {NOTICE}")


def model_sidebar() -> None:
    """Which model is open (name, data, date, method), on every page: what every figure on it belongs to."""
    d = get_open_model().describe(get_predictor().meta)
    st.sidebar.markdown(f"**Model open:** `{d['name']}`  \n{display_name(d['method'])} · trained {d['date']}  \n"
                        f"Data: {d['data']}")
    if not get_open_model().shipped:
        st.sidebar.caption("Your own model (RMD_CHECKPOINT). `make run` alone opens the shipped one.")


def fail(err: Exception) -> None:
    """Show a problem the user can act on; anything else is reported without a traceback."""
    if isinstance(err, RobustMDiffError):
        st.error(str(err))
    else:
        st.error(f"Something went wrong ({type(err).__name__}). The inputs were not stored; please try again.")


def probability_chart(pred: Prediction, previous: dict[str, float] | None = None, muted: bool = False) -> go.Figure:
    """Class probabilities (the predicted class highlighted; all grey when `muted`: an input is outside
    what the model was trained on)."""
    classes = list(pred.probabilities)
    shown = [display_name(c) for c in classes]
    fig = go.Figure()
    if previous:
        fig.add_trace(go.Bar(y=shown, x=[previous.get(c, np.nan) for c in classes], orientation="h",
                             name="before", marker_color="lightgray"))
    fig.add_trace(go.Bar(y=shown, x=[pred.probabilities[c] for c in classes], orientation="h", name="now",
                         marker_color=["#9ca3af" if muted else "#2563eb" if c == pred.prediction else "#93c5fd"
                                       for c in classes],
                         text=[f"{pred.probabilities[c]:.1%}" for c in classes], textposition="outside"))
    fig.update_layout(barmode="group", height=60 + 34 * len(classes), xaxis=dict(range=[0, 1.1], tickformat=".0%"),
                      margin=dict(l=10, r=10, t=10, b=10), yaxis=dict(autorange="reversed"),
                      legend=dict(orientation="h"))
    return fig


def contribution_chart(contributions: list[dict], target: str = "the predicted class") -> go.Figure:
    """The gradient share of each PRESENT modality (normalised over them) with its change in p(target) when
    removed (p switched off − p as given, as the before/after of the switches shows). Synthesized modalities
    have no share and are not drawn: the page lists them with their synthesis confidence."""
    shown = [c for c in contributions if c["status"] == "present"]

    def change(c: dict) -> str:
        x = c["change_when_removed"]
        return f"removing it: {x:+.3f}" if np.isfinite(x) else "the only modality given"

    fig = go.Figure(go.Bar(x=[c["gradient"] for c in shown], y=[c["modality"] for c in shown], orientation="h",
                           text=[f"{c['gradient']:.0%} · {change(c)}" for c in shown], textposition="auto",
                           hovertemplate="%{y}: share of influence %{x:.1%} (gradient magnitude |∂p/∂H_i| of the "
                                         "modality's representation H_i, over the present modalities)<extra></extra>"))
    fig.update_layout(height=80 + 40 * len(shown), margin=dict(l=10, r=10, t=30, b=10),
                      xaxis=dict(tickformat=".0%", range=[0, 1]),
                      title=f"How much each given input moves p({target}); the change in p when it is removed")
    return fig


def missing_contributions_text(contributions: list[dict]) -> str:
    """One line for the modalities that were synthesized (or absent): no share, their synthesis confidence."""
    items = [c["modality"] + (f" (synthesis confidence {c['synthesis_confidence']:.0%})" if "synthesis_confidence" in c
                              else f" ({c['status']})") for c in contributions if c["status"] != "present"]
    return ("Synthesized, not observed, so no share: " + ", ".join(items) + ".") if items else ""


def lab_chart(rows, method: str, modality: str = "labs") -> go.Figure:
    """The values given of one tabular modality, ranked by the attribution of the method the user chose (and only
    that method); titled with the modality's name (a table of one's own need not be labs)."""
    shown = [r for r in rows if r.value is not None]
    labels = [" ".join(filter(None, (r.label, f"{r.value:.3g}", r.unit, r.flag))) for r in shown]
    fig = go.Figure(go.Bar(y=labels, x=[r.score for r in shown], orientation="h", name=method,
                           marker_color=["#2563eb" if r.score >= 0 else "#dc2626" for r in shown]))
    fig.update_layout(height=80 + 28 * len(shown), yaxis=dict(autorange="reversed"),
                      margin=dict(l=10, r=10, t=30, b=10),
                      title=f"{display_name(modality)} ranked by influence ({method}; + supports the prediction)")
    return fig
