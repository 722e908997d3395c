"""The explanation review's study-admin view: the admin gate, PIN resets, which models the study compares
(and the commands that train the missing ones), the results (tables, chart, paired test, agreement) and
the exports.

Not a page itself (app.py lists the pages): pages/review.py draws it under "Results (study admin)" and
hands it the study's store, study and line-up. The numbers come from core.review.stats, the CSVs from
core.review.export; this only draws.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from core.errors import RobustMDiffError
from core.names import display_name
from core.paths import ROOT
from core.review import auth
from core.review.export import ratings_csv, results_csv
from core.review.models import Lineup, Study, train_command, with_study
from core.review.stats import (ALPHA, MIN_RATINGS, agreement, paired_tests, per_method, per_model,
                               per_model_method)
from core.review.store import REFERENCE_MODEL, SCALES, ReviewStore


def _on_admin(store: ReviewStore, client: Callable[[], str]) -> None:
    try:
        auth.open_admin(store, st.session_state.get("admin_code", ""), client=client())
        st.session_state["review_admin"] = True
        st.session_state.pop("admin_error", None)
    except RobustMDiffError as e:
        st.session_state["admin_error"] = str(e)
    st.session_state["admin_code"] = ""


def results_view(store: ReviewStore, study: Study, lineup: Callable[[], Lineup], client: Callable[[], str]) -> None:
    """The admin gate, then PIN resets, the model line-up, the results and the exports. `lineup` and `client`
    are the page's: read when needed (the line-up only once the admin is in, the client by the gate's callback)."""
    if not st.session_state.get("review_admin"):
        st.caption("Results reveal which model and method made each explanation, so only the study admin sees them.")
        with st.form("admin"):
            st.text_input("Study-admin code", type="password", key="admin_code")
            st.form_submit_button("Open results", on_click=_on_admin, args=(store, client))
        if "admin_error" in st.session_state:
            st.error(st.session_state["admin_error"])
        return
    pin_reset_view(store)
    models_view(study, lineup())
    everything = store.all_ratings()
    ratings = study.local(everything)  # never mixed with the ratings of a study on another model or data
    st.caption(f"{len(ratings)} ratings from {len({r['reviewer'] for r in ratings})} reviewers.")
    if len(everything) > len(ratings):
        st.caption(f"This database also holds {len(everything) - len(ratings)} ratings of studies on other models "
                   "or data: not counted here; the ratings export includes them, each with its study.")
    if not ratings:
        if everything:
            _exports(store, study, everything, {})
        return
    tables = {"per_model": per_model(ratings), "per_method": per_method(ratings),
              "per_model_method": per_model_method(ratings), "paired_test": paired_tests(ratings)}
    st.plotly_chart(ratings_chart(tables["per_model_method"]), width="stretch", key="ratings_chart")
    st.caption(f"Mean rating (1–5) with its 95 % range; a group with fewer than {MIN_RATINGS} ratings, or "
               "ratings of a single case, gets no range (too few ratings).",
               help="95 % bootstrap percentile interval that resamples cases (ratings of one case are not "
                    "independent); it stays within the 1–5 scale.")
    for name, title in (("per_model", "Per model"), ("per_method", "Per explanation method"),
                        ("per_model_method", "Per model and method")):
        st.markdown(f"**{title}**")
        readable_table(tables[name].round(2), f"table_{name}", hide=("ci_low", "ci_high"))
    paired_view(tables["paired_test"])
    alpha = agreement(ratings)
    st.markdown("Agreement between reviewers (1 = full, 0 = as by chance): " +
                ", ".join(f"{k} {v:.2f}" if v == v else f"{k} not yet measurable (needs items rated by two reviewers)"
                          for k, v in alpha.items()),
                help="Krippendorff's α for ordinal ratings, per question, over the items rated by two or more "
                     "reviewers.")
    _exports(store, study, everything, tables)


def _exports(store: ReviewStore, study: Study, ratings: list[dict], tables: dict[str, pd.DataFrame]) -> None:
    """Every rating of the database with the study (model and data) it is of; this study's result tables, each
    row with the study."""
    c1, c2 = st.columns(2)
    c1.download_button("Export ratings (CSV)", ratings_csv(with_study(ratings, store.studies())), "ratings.csv",
                       mime="text/csv", key="export")
    if tables:
        described = study.describe()
        c2.download_button("Export results (CSV)", results_csv({k: t.assign(study=described) if len(t) else t
                                                                 for k, t in tables.items()}),
                           "review-results.csv", mime="text/csv", key="export_results")


# the admin's tables keep the internal names (the exported CSV and `python -m core train --method` use them);
# people read the same rows in words: these columns are drawn as the words in a column of their own
WORDS = {"model": "Model", "method": "Explanation method", "reference": "Reference", "comparison": "Compared with",
         "verdict": "Verdict"}
HEADERS = {"scale": "Question", "mean": "Mean", "range": "95 % range", "n": "Ratings", "n_cases": "Cases",
           "n_pairs": "Pairs", "n_nonzero": "Pairs that differ", "mean_diff": "Mean difference",
           "median_diff": "Median difference", "p": "p", "p_corrected": "p adj."}


def _words(value: object) -> str:
    """A model or method in words; in "<model> higher", the model."""
    name, _, rest = str(value).partition(" ")
    return display_name(name) + (f" {rest}" if rest else "")


def readable_table(df: pd.DataFrame, key: str, helps: dict[str, str] | None = None, hide: tuple[str, ...] = (),
                   headers: dict[str, str] | None = None) -> None:
    """Draw a results table with names and headers in words; the frame keeps its internal names too.
    `hide`: columns kept in the frame (and the export) but not drawn, e.g. an interval's ends beside its text."""
    shown = df.copy()
    for col, head in WORDS.items():
        if col in shown:
            shown[head] = shown[col].map(_words)
    order = [WORDS.get(c, c) for c in df.columns if c not in hide]  # e.g. the verdict beside its corrected p
    headers = {**HEADERS, **(headers or {})}
    # placeholder: an interval of a single rating does not exist, shown as a dash rather than "None"
    st.dataframe(shown, hide_index=True, key=key, column_order=order, placeholder="–", column_config={
        c: st.column_config.Column(headers.get(c, c), help=(helps or {}).get(c)) for c in df.columns if c not in WORDS})


def _shown_path(path: Path) -> str:
    """A checkpoint inside the project by its project path (no server paths on the page)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return path.name


def models_view(study: Study, found: Lineup) -> None:
    """Which model and data the study runs on, which models it compares, and what is missing with the command
    that trains it (next to the open model, on its data)."""
    st.markdown(f"**This study runs on** {study.describe()}" + ("" if study.shipped else f" (study `{study.key}`)"))
    st.markdown("**Models in this study** (a second blinded factor beside the explanation method)")
    st.dataframe(pd.DataFrame([{"model": m.name, "label": m.label, "checkpoint": _shown_path(m.path)} for m in found.models],
                              columns=["model", "label", "checkpoint"]), hide_index=True, key="models_table",
                 column_order=["label", "checkpoint"], column_config={"label": "Model", "checkpoint": "Checkpoint"})
    if found.missing:
        commands = "\n".join(train_command(n, study) for n in found.missing)
        st.warning(f"Missing from the study: {', '.join(f'{display_name(n)} ({n})' for n in found.missing)}. The study "
                   "runs with the models above; train the missing ones (the queue takes them up at the next page "
                   "load):")
        st.code(commands, language="bash")
    for path, why in found.skipped:  # e.g. a model of other classes: reviewers would see its answers as numbers
        st.warning(f"Not used: {_shown_path(Path(path))}: {why}.")


def ratings_chart(table: pd.DataFrame) -> go.Figure:
    """Mean rating per method, one bar colour per model, one panel per scale."""
    fig = make_subplots(rows=1, cols=len(SCALES), subplot_titles=SCALES, shared_yaxes=True)
    for m_i, (model, sub) in enumerate(table.groupby("model", sort=False)):
        for s_i, scale in enumerate(SCALES):
            part = sub[sub.scale == scale]
            fig.add_trace(go.Bar(x=[display_name(m) for m in part.method], y=part["mean"], name=display_name(model),
                                 legendgroup=model,
                                 showlegend=s_i == 0, marker_color=f"hsl({(m_i * 137) % 360},55%,45%)",
                                 error_y=dict(type="data", symmetric=False, array=part.ci_high - part["mean"],
                                              arrayminus=part["mean"] - part.ci_low)), row=1, col=s_i + 1)
    fig.update_layout(barmode="group", height=420, margin=dict(l=10, r=10, t=40, b=10))
    fig.update_yaxes(range=[0, 5.5])
    fig.update_yaxes(title_text="mean rating (95 % CI)", row=1, col=1)
    return fig


def paired_view(paired: pd.DataFrame) -> None:
    st.markdown(f"**Paired comparison: {display_name(REFERENCE_MODEL)} against each comparison model**")
    if paired.empty:
        st.caption("Needs ratings of RobustMDiff and of a comparison model by the same reviewer on the same case "
                   "and method.")
        return
    level = f"{100 * paired.confidence.iloc[0]:.3g} %"  # 95 % with one comparison model, 97.5 % with two
    readable_table(paired.round(4), "table_paired", hide=("ci_low", "ci_high", "confidence", "reference"),
                   headers={"range": f"{level} range (corrected)"}, helps={
        "range": "Range of the mean difference, widened for the number of comparison models (Bonferroni): "
                 "it excludes zero exactly when the corrected p is below 0.05, and then the verdict names the "
                 "model rated higher.",
        "p": "Two-sided bootstrap p of the mean difference (cases resampled), before the correction.",
        "p_corrected": f"p × the number of comparison models (Bonferroni), per question: the verdict's p "
                       f"(a difference when below {ALPHA})."})
    st.caption("Pairs: one reviewer's ratings of the same case and explanation method under RobustMDiff and under "
               "the comparison model. Difference = RobustMDiff − comparison (positive: RobustMDiff rated higher). "
               "One rule per row: the verdict, the corrected range and the corrected p agree; cases are "
               "resampled, so pairs that share a case are not counted as independent.")


def _on_reset_pin(store: ReviewStore) -> None:
    name = st.session_state.get("reset_who")
    if name:
        store.reset_pin(name)
        st.session_state["admin_note"] = (f"{name} chooses a new PIN at their next sign-in (typing it twice); their "
                                          "ratings stay, and their open sessions have ended.")


def pin_reset_view(store: ReviewStore) -> None:
    """A forgotten PIN: the admin clears it and the reviewer sets a new one at their next sign-in."""
    names = store.reviewer_names()
    if not names:
        return
    with st.expander("Reviewer forgot their PIN"):
        st.selectbox("Reviewer", names, index=None, key="reset_who")
        st.button("Reset PIN", key="reset_pin", on_click=_on_reset_pin, args=(store,))
        st.caption("Ask them to sign in right away: until they do, anyone with the reviewer code could claim "
                   "the name.")
        if "admin_note" in st.session_state:
            st.success(st.session_state.pop("admin_note"))
