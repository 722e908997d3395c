"""Robustness lab: every method under every availability pattern, and a live demo on one case."""

from __future__ import annotations

import json
import time

import pandas as pd
import plotly.express as px
import streamlit as st

from core.evaluation import describe, figures, report, verdicts
from core.errors import RobustMDiffError
from core.evaluation.evaluate import QUICK_LIMIT, QuickJob, start_quick, start_score
from core.evaluation.harness import condition_label, pattern_label
from core.evaluation.methods import methods_for
from core.evaluation.patterns import availability_patterns, pattern_name
from core.names import display_name
from core.open_model import score_dir, shown
from core.paths import ASSETS
from core.review import auth
from core.review.auth import admin_enabled
from core.review.store import ReviewStore
from pages.common import (fail, get_demo_cases, get_open_model, get_predictor, get_service, has_demo_cases,
                          inside_app, load_demo_case, no_demo_cases_text, notice)

inside_app()
st.title("Robustness lab")
notice()
predictor = get_predictor()
open_model = get_open_model()
names = [n for n, _ in predictor.modalities]
METRICS = {"auroc": "Telling diagnoses apart (AUROC)", "accuracy": "Accuracy"}


def numbers(df: pd.DataFrame, helps: dict[str, str], fmt: str = "%.1f") -> dict:
    """Column settings: the definition of each column in its tooltip, numbers compact (the tables must fit
    a 1440 px screen without scrolling sideways)."""
    config = {}
    for col in df.columns:
        if pd.api.types.is_numeric_dtype(df[col]):
            config[col] = st.column_config.NumberColumn(help=helps.get(col), format=fmt)
        else:
            config[col] = st.column_config.TextColumn(help=helps.get(col), pinned=col == "Method")
    return config


def all_rows(df: pd.DataFrame) -> int:
    """A table height that shows every row (17 methods: no scrolling inside the table)."""
    return 35 * (len(df) + 1) + 3


def comparison_tables(result: dict, key: str) -> None:
    """The papers' comparison, one metric at a time, every column on screen; the full markdown to download."""
    rows, modalities = result["rows"], result["modalities"]
    metric = st.segmented_control("Measure", list(METRICS), format_func=METRICS.get, default="auroc",
                                  key=f"{key}_metric", help=report.METRIC_HELP["auroc"] + " " + report.METRIC_HELP["accuracy"])
    table, helps = report.comparison(rows, modalities, metric or "auroc")
    st.dataframe(table, hide_index=True, width="stretch", column_config=numbers(table, helps), key=f"{key}_table",
                 height=all_rows(table))
    st.caption(f"{METRICS[metric or 'auroc']}, %, on the {result['n_test_complete']} complete test cases with only "
               "the named modalities given; mean over the training seeds. Hover a column title for its definition.")
    st.markdown("**How much of the all-given AUROC each method keeps (%)**")
    ret, ret_helps = report.retention_view(rows, modalities)
    st.dataframe(ret, hide_index=True, width="stretch", column_config=numbers(ret, ret_helps), key=f"{key}_retention",
                 height=all_rows(ret))
    rare = report.rare_table(rows, result.get("rare_intervals"))
    if not rare.empty:
        st.markdown("**Rare and common diagnoses** (modalities missing as they come)")
        shown = ["Method", "Rare: AUROC", "Rare: found (recall)", "Common: AUROC", "Common: found (recall)"]
        rare.columns = shown + ["Rare AUROC: 95 % interval", "Rare recall: 95 % interval"][:len(rare.columns) - 5]
        rare[shown[1:]] = 100 * rare[shown[1:]]
        recall = "Share of the cases with such a diagnosis that get it as the top answer (recall, sensitivity). In %."
        st.dataframe(rare, hide_index=True, width="stretch", key=f"{key}_rare", height=all_rows(rare),
                     column_config=numbers(rare, {
            "Rare: AUROC": report.METRIC_HELP["auroc"], "Common: AUROC": report.METRIC_HELP["auroc"],
            "Rare: found (recall)": recall, "Common: found (recall)": recall}))
    from core.evaluation.evaluate import markdown

    st.download_button("Download the full table (markdown, as in BENCHMARKS.md: both measures, ± std)",
                       markdown(result), "table.md", mime="text/markdown", key=f"{key}_markdown")


def targets_table(targets: list[dict], key: str) -> None:
    """A static table: long measured values wrap instead of running off the right edge."""
    st.table(report.targets_frame(targets), hide_index=True)


BOOTSTRAP_HELP = ("Difference in macro AUROC, in points (+: RobustMDiff higher). Results made since issue 28: a "
                  "hierarchical bootstrap that resamples each method's training seeds and the test cases (the same "
                  "cases for both methods of a pair), so the interval includes training variance. Older results: a "
                  "paired bootstrap: 2000 "
                  "resamples of the test cases, both methods scored on the same resampled cases (the pattern average "
                  "stacks every availability pattern; every set stacks the training seeds whose per-case results were "
                  "kept). " + verdicts.BOOTSTRAP_RULE)


def show_results(result: dict, key: str) -> None:
    rows, modalities = result["rows"], result["modalities"]
    which, shipped_model = describe.provenance(result, predictor.meta, open_model.name)
    if shipped_model:
        st.caption(which)
    else:  # a table of another model must say so before anyone compares it with the Model card's figures
        st.info(which, icon=":material/history:")
    st.caption(f"{result['n_test_complete']} complete test cases; seeds {result['seeds']}; {describe.run_time(result)}."
               + "".join(f" {label}: not trained, because the configuration already leaves its device out, so it "
                         "would be RobustMDiff itself." for label in result.get("same_as_robustmdiff", {}).values()))
    st.plotly_chart(figures.auroc_by_pattern(rows, modalities), width="stretch", key=f"{key}_heat")
    c1, c2 = st.columns([3, 2])
    c1.plotly_chart(figures.retention_curve(rows, modalities), width="stretch", key=f"{key}_ret")
    c2.plotly_chart(figures.reliability_diagram(result["reliability"], methods=figures.RELIABILITY_METHODS),
                    width="stretch", key=f"{key}_rel")
    c2.caption("On the diagonal, a stated confidence of 80 % is right 80 % of the time (calibration).")
    st.markdown("**Targets**")
    boots = result.get("bootstraps") or ({"natural": result["bootstrap_natural"]} if result.get("bootstrap_natural") else {})
    # recomputed (older results name methods internally); the significance target from the bootstrap's verdicts
    targets_table(report.targets(rows, modalities, boots or None, result.get("config")), key)
    if boots:
        st.markdown("**RobustMDiff against each method, with intervals**", help=BOOTSTRAP_HELP)
        chosen_set = st.segmented_control("Missing data", list(boots), format_func=verdicts.BOOTSTRAP_SETS.get,
                                     default="natural" if "natural" in boots else next(iter(boots)), key=f"{key}_boot")
        chosen_rows = boots[chosen_set or next(iter(boots))]
        st.table(verdicts.bootstrap_frame(chosen_rows), hide_index=True)
        st.caption(verdicts.bootstrap_caption(chosen_rows))
    with st.expander("Comparison table (every method under every combination of modalities)"):
        comparison_tables(result, key)


# ---- heavy jobs (a quick evaluation, scoring this model): a process of their own
# (core.evaluation.evaluate.start_quick / start_score), polled here; session keys "<prefix>_job" etc.
def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def job_progress(prefix: str) -> None:
    """The session's job, polled from its folder each second by a fragment alone, so the rest of the page (the
    live demo) stays usable meanwhile; once the run has ended, one full rerun draws its results."""
    job: QuickJob | None = st.session_state.get(f"{prefix}_job")
    if job is None:
        return
    if job.running:
        news = job.news()
        fraction = min(float(news.get("fraction", 0.0)), 1.0)
        st.progress(fraction, text=f"{news.get('text', f'starting the {job.kind} process')} · {fraction:.0%}")
        last = time.time() - news.get("time", job.started)
        st.caption(f"{minutes(time.time() - job.started)} elapsed; last news {last:.0f} s ago. It runs in a process "
                   "of its own at low priority: you can leave this page, the run goes on, and its results appear here "
                   "when you come back.")
        may_stop = not admin_enabled() or st.session_state.get(f"{prefix}_started_here")  # with a code: its starter
        if may_stop and st.button(f"Stop the {job.kind}", key=f"stop_{prefix}",
                                  help=f"One {job.kind} runs per server: stopping it stops it for everyone "
                                       "following it."):
            job.stop()
        else:
            return
    if job.error() is not None:
        st.session_state[f"{prefix}_error"] = job.error()
    else:
        st.session_state[f"{prefix}_result"] = job.result()
        st.session_state.pop(f"{prefix}_error", None)
    del st.session_state[f"{prefix}_job"]
    st.rerun()


def quick_progress() -> None:
    job_progress("quick")


def score_progress() -> None:
    job_progress("score")


def _on_run(prefix: str) -> None:
    """Start a quick evaluation or the scoring of this model, or follow the one running
    (core.evaluation.evaluate.admit_quick: who may start one); the admin code is checked with the review study's
    throttle and never left in the form."""
    ss = st.session_state
    code, ss[f"{prefix}_admin_code"] = ss.get(f"{prefix}_admin_code", ""), ""

    def admin() -> None:
        auth.open_admin(ReviewStore(), code, auth.client_key(st.context.ip_address, st.context.headers))

    try:
        if prefix == "score":
            job, fresh = start_score(open_model.checkpoint, open_model.data_given, admin=admin)
        else:  # an own model: its data and configuration; the shipped one: the 600-case quick cohort
            job, fresh = start_quick(list(ss.get("quick_methods", [])), data=open_model.data_given, admin=admin,
                                     checkpoint=None if open_model.shipped else open_model.checkpoint)
    except RobustMDiffError as e:
        ss[f"{prefix}_refused"] = str(e)
        return
    ss[f"{prefix}_job"], ss[f"{prefix}_started_here"], ss[f"{prefix}_followed"] = job, fresh, not fresh


def _on_run_quick() -> None:
    _on_run("quick")


def _on_run_score() -> None:
    _on_run("score")


def job_controls(prefix: str, label: str, on_click, help_text: str | None = None) -> QuickJob | None:
    """The admin code (where one is set), the start button, a refusal, and the job's progress."""
    if admin_enabled():
        st.text_input("Study-admin code (a new run needs it)", type="password", key=f"{prefix}_admin_code")
    else:
        st.caption(QUICK_LIMIT)
    st.button(label, type="primary", key=f"run_{prefix}", on_click=on_click, help=help_text)
    if f"{prefix}_refused" in st.session_state:
        st.error(st.session_state.pop(f"{prefix}_refused"))
    job = st.session_state.get(f"{prefix}_job")
    if st.session_state.pop(f"{prefix}_followed", False) and job is not None:
        st.info(f"A {job.kind} is already running on this server (started {minutes(time.time() - job.started)} ago"
                + (f"; RobustMDiff against {', '.join(map(display_name, job.methods)) or 'itself'}" if prefix == "quick"
                   else "") + "). One runs at a time: its progress is below, and its results will show here.")
    # polled only while a run is going on: an idle page asks nothing of the server
    st.fragment(quick_progress if prefix == "quick" else score_progress,
                run_every=1.0 if job is not None and job.running else None)()
    if f"{prefix}_error" in st.session_state:
        st.error(st.session_state[f"{prefix}_error"])
    return job


def show_score(result: dict) -> None:
    """score.json (`python -m core score`): this checkpoint itself on its test split, no comparison."""
    df = pd.DataFrame(result["rows"])
    df = df[df.group == "all"]
    table = pd.DataFrame({"Modalities given": df.condition.map(condition_label), "Cases": df.n,
                          "AUROC": 100 * df.auroc, "Accuracy": 100 * df.accuracy, "ECE": df.ece})
    st.markdown(f"**{open_model.name[0].upper() + open_model.name[1:]}, scored on its test split** "
                f"(`{result['data']}`, {result['n_test']} test cases)")
    st.dataframe(table, hide_index=True, width="stretch", key="score_table", height=all_rows(table),
                 column_config=numbers(table, {"AUROC": report.METRIC_HELP["auroc"],
                                               "Accuracy": report.METRIC_HELP["accuracy"],
                                               "ECE": "Calibration error (0 = perfect)."}, fmt="%.2f"))
    st.caption("The checkpoint itself under every combination of modalities (complete test cases, the others "
               "switched off), random missingness and the data's natural missingness. No other method is trained: "
               "the comparison needs the evaluation above.")


def score_section() -> None:
    """No evaluation yet: score the checkpoint as it is (minutes, no training), in a process of its own."""
    found = st.session_state.get("score_result")
    path = score_dir(open_model.checkpoint) / "score.json"
    if found is None and path.exists():
        found = json.loads(path.read_text(encoding="utf-8"))
    if found is not None and st.session_state.get("score_job") is None:
        show_score(found)
        return
    st.markdown(f"Meanwhile, score {open_model.name} as it is, without training anything: `"
                f"{open_model.command('score', '--out', shown(score_dir(open_model.checkpoint)), '--json')}` (minutes; "
                "a process of its own at low priority, one heavy job at a time per server).")
    job_controls("score", "Score this model", _on_run_score)
    if "score_result" in st.session_state:
        show_score(st.session_state["score_result"])


def show_regimes(study: dict) -> None:
    """Where the diffusion helps: RobustMDiff against each method in every missing-data regime (issue 17)."""
    from core.evaluation.regime_study import figure, frame, interval_words
    from core.evaluation.regimes import REGIMES

    which, current = describe.study_provenance(study, predictor.meta)
    if not current:  # an earlier cohort or model: say so before anyone reads it against today's figures
        st.info(which, icon=":material/history:")
    st.markdown("Each regime changes one thing about the data: how many training cases are complete, whether "
                "modalities go missing more for severe and rare cases, how many training labels there are, or how "
                "much the modalities overlap. **w/o diffusion** is the same model without the restoration of missing "
                "modalities: its row is what the diffusion itself adds.")
    st.plotly_chart(figure(study["summary"]), width="stretch", key="regimes_figure")
    st.table(frame(study["summary"]), hide_index=True)
    st.caption(interval_words(study["summary"]) + " Reading: 'better' or 'worse' only where the Holm-adjusted p (across the methods of a regime) is below "
               "0.05. The 95 % interval beside it is not adjusted, so it can exclude zero where the adjusted p does "
               "not reach 0.05. Every model here is trained by the study itself: none is the shipped checkpoint."
               + (f" {which}" if current else ""))
    n_seeds = len(study.get("seeds") or [0])  # files before issue 28 do not record them: one seed
    seeds = "one seed" if n_seeds == 1 else f"{n_seeds} seeds"
    scale = (f"Quick variant (600-case cohorts, short training, {seeds}): a demonstration, with wide intervals. "
             if study.get("quick") else f"Short training schedule on the full 3,000-case cohorts, {seeds}: every "
             "method a few points below its fully trained AUROC. " if study.get("short")
             else f"Full training schedule, {seeds}. ")
    st.caption(scale + "Training data: " + "; ".join(
        f"{REGIMES[n].title}: {t['complete']} complete, {t['labelled']} labelled" for n, t in study["train"].items()))


shipped, regimes, quick, live = st.tabs(["Shipped evaluation" if open_model.shipped else "This model's evaluation",
                                         "Missing-data regimes", "Run a quick evaluation", "Live demo on one case"])
with shipped:
    # the full evaluation beside the checkpoint, else its quick one (core.open_model.OpenModel.evaluation_dirs)
    found = [d / "results.json" for d in open_model.evaluation_dirs() if (d / "results.json").exists()]
    if found:
        show_results(json.loads(found[0].read_text(encoding="utf-8")), "shipped")
    else:
        st.info(f"No evaluation of {open_model.name} yet. `{open_model.command('evaluate')}` compares it with every "
                f"baseline and ablation (3 seeds each: the long run), `{open_model.command('evaluate', '--quick')}` in "
                f"minutes (short schedule, one seed); the results are written beside the checkpoint "
                f"({', '.join(shown(d) for d in open_model.evaluation_dirs())}) and show here.",
                icon=":material/info:")
        score_section()

with regimes:
    # the full study when it is shipped, else its quick variant; it never trains on another model's data
    found = [p for p in (ASSETS / "evaluation" / d / "regimes.json" for d in ("regimes", "regimes-quick")) if p.exists()]
    if not open_model.shipped:
        st.info("The missing-data regime study trains its own models on generated variants of the app's built-in "
                "demonstration data, with the default configuration (`python -m core evaluate --regimes all`): it says nothing about "
                f"{open_model.name} or its data, so it is not shown here. Open the shipped model (`make run`) to see "
                "it.", icon=":material/info:")
    elif found:
        show_regimes(json.loads(found[0].read_text()))
    else:
        st.info("No regime study shipped yet: run `python -m core evaluate --regimes all --out assets/evaluation/regimes`.")

with quick:
    if open_model.shipped:
        st.markdown("Trains the chosen methods on a 600-case cohort for a few epochs and scores them: a demonstration "
                    "of the harness in a few minutes, not a benchmark. It runs as a separate process at low priority, "
                    "one at a time per server.")
    else:
        spec = predictor.meta.get("spec", {})
        st.markdown(f"Trains the chosen methods on the data of {open_model.name} (`{spec.get('name', '?')}`, "
                    f"{predictor.meta.get('data_size', '?')} cases) with its configuration and the short schedule, one "
                    f"seed, and scores them: `{open_model.command('evaluate', '--quick')}`, a demonstration, not a "
                    "benchmark. It runs as a separate process at low priority, one at a time per server; its results "
                    f"are kept beside the checkpoint ({shown(open_model.evaluation_dirs()[1])}).")
    options = [m.name for m in methods_for(names) if m.name != "robustmdiff"]
    st.multiselect("Methods compared with RobustMDiff", options, format_func=display_name,
                   default=[m for m in ["early_zero", "dropout_0.5", "masked_attention"] if m in options],
                   key="quick_methods")
    job_controls("quick", "Run quick evaluation", _on_run_quick)
    if "quick_result" in st.session_state:
        show_results(st.session_state["quick_result"], "quick")


@st.cache_data(show_spinner="Predicting the case under every combination of modalities…", max_entries=32)
def live_rows(row: int, model: str | None) -> list[dict]:
    """The case predicted from every subset of its modalities: computed once per case and model (`model`:
    the checkpoint's digest, so a retrained model is not served stale rows)."""
    case = load_demo_case(row)
    out = []
    for pattern in availability_patterns(len(names)):
        absent = [n for n, keep in zip(names, pattern) if not keep]
        # the app's pool, sharing the case explorer's kept predictions (same key)
        p = get_service().predict_job(case, f"demo-{case.case_id}", absent).result()
        out.append({"pattern": pattern_name(pattern, names), "missing": len(absent), "prediction": p.prediction,
                    "probabilities": p.probabilities,
                    "confidence": {m: s["confidence"] for m, s in p.synthesized.items()}})
    return out


def confidence_text(value: float | None) -> str:
    """A synthesis confidence as read: a percentage, or — where the modality was given (no synthesis)."""
    return "—" if value is None else f"{value:.0%}"


with live:
    if not has_demo_cases():  # an own model whose data is not on this machine (or has no complete test case)
        st.info(f"No demo cases for {open_model.name}: {no_demo_cases_text()}", icon=":material/info:")
        st.stop()
    demos = get_demo_cases()
    choice = st.selectbox("Case", [d.label for d in demos], key="live_case")
    demo = demos[[d.label for d in demos].index(choice)]
    truth = display_name(demo.diagnosis)
    try:
        results = live_rows(demo.row, predictor.meta.get("meta_sha256"))
    except Exception as e:  # noqa: BLE001
        fail(e)
        st.stop()
    chance = "P(true diagnosis)"
    confidence = {m: f"{display_name(m)} conf." for m in names}
    df = pd.DataFrame([{"Modalities given": pattern_label(r["pattern"]), "Missing": r["missing"],
                        "Prediction": display_name(r["prediction"]), chance: r["probabilities"][demo.diagnosis],
                        **{confidence[m]: confidence_text(r["confidence"].get(m)) for m in names}}
                       for r in results])
    st.markdown(f"True diagnosis: **{truth}**. Modalities are removed one combination at a time.")
    fig = px.bar(df, x="Modalities given", y=chance, color="Prediction", range_y=[0, 1],
                 title=f"Probability of the true diagnosis ({truth}) as modalities go missing")
    st.plotly_chart(fig, width="stretch", key="live_chart")
    confidence_help = ("Synthesis confidence of the missing {m}: how likely the answer stays the same once the real "
                       "one is added (learned on validation cases). —: the {m} was given, so nothing was synthesized.")
    st.dataframe(df, hide_index=True, width="stretch", column_config={
        "Modalities given": st.column_config.TextColumn(width="medium"),
        "Missing": st.column_config.NumberColumn(width="small", help="How many modalities are switched off."),
        "Prediction": st.column_config.TextColumn(width="medium"),
        chance: st.column_config.NumberColumn(format="percent", help=f"The model's probability of {truth}."),
        **{c: st.column_config.TextColumn(help=confidence_help.format(m=display_name(m)))
           for m, c in confidence.items()}})
    st.caption("Confidence columns: for each modality that is missing in that row, how likely the answer stays the "
               "same once the real one is added; — where the modality was given (nothing was synthesized).")
