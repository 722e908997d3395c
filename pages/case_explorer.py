"""Case explorer: a demo case or your own files → prediction, synthesis confidence, explanations, report.

Everything here follows the open model's spec (its modalities by name and kind, its classes): a model of your own
may read one text, three tables, or two colour photographs and a table; nothing assumes a scan, a note and labs."""

from __future__ import annotations

import hashlib
import html
import time

import numpy as np
import pandas as pd
import streamlit as st

from core.data.dataset import CaseInputs
from core.data.readers import LabPanel, read_labs, read_note, read_scan
from core.data.readers.labs import labs_from_mapping
from core.data.readers.note import clean_note
from core.data.readers.scan import CT_WINDOWS, Scan
from core.errors import LabError, RobustMDiffError
from core.explain.explanation import METHODS as EXPLAIN_METHODS, Explanation
from core.explain.render import (CMAPS, COMPLETENESS, REMOVED, colour_view, completeness_text, display_image,
                                 explained_parts_text, held_fixed_text, image_legend_html,
                                 legend_html, note_html, note_units_text, overlay, report_html)
from core.names import display_name
from core.serve import upload_key
from pages.common import (contribution_chart, demo_colours, demo_source_text, fail, get_demo_cases, get_predictor,
                          get_service, has_demo_cases, inside_app, lab_chart, load_demo_case, missing_contributions_text,
                          no_demo_cases_text, notice, probability_chart, session_key, wait_for)

inside_app()
st.title("Case explorer")
notice()
predictor = get_predictor()
service = get_service()
names = [n for n, _ in predictor.modalities]
kinds = dict(predictor.modalities)
colours: dict = {}  # the colour photographs among this case's images, by modality (drawn in colour; the model reads grey)
INPUT_WORDS = {"image": "an image", "text": "a text", "tabular": "a table of values"}


def scan_controls(scan: Scan, key: str) -> tuple[Scan, str]:
    """Slice/projection for volumes (the plane the model reads) and window/level (the display only: the
    chosen window is kept in the session for drawing, never given to the model). Returns the view and a
    key of what the model reads of it, so a display change never asks the model again."""
    slice_index, projection = None, None
    if scan.is_volume:
        c1, c2 = st.columns(2)
        mode = c1.radio("Volume view", ["slice", "maximum projection", "mean projection"], horizontal=True, key=f"{key}_mode")
        if mode == "slice":
            slice_index = c2.slider("Slice", 0, scan.n_slices - 1, scan.n_slices // 2, key=f"{key}_slice")
        else:
            projection = "max" if mode.startswith("maximum") else "mean"
    centre, width = scan.default_window()
    presets = {"file / automatic": (centre, width)}
    if scan.modality == "CT":
        presets.update(CT_WINDOWS)
    c1, c2, c3 = st.columns(3)
    preset = c1.selectbox("Window preset", list(presets), key=f"{key}_preset")
    lo, hi = float(scan.pixels.min()), float(scan.pixels.max())
    span = max(hi - lo, 1.0)
    pc, pw = presets[preset]
    centre = c2.slider("Window centre (level)", lo - span / 2, hi + span / 2, float(pc), key=f"{key}_c_{preset}")
    width = c3.slider("Window width", span / 200, 2 * span, float(min(max(pw, span / 200), 2 * span)), key=f"{key}_w_{preset}")
    st.session_state.setdefault("display_window", {})[key] = (centre, width)
    st.caption("Window and level change only what is drawn. The model always reads the file's own window "
               "(else the 0.5–99.5 percentile range), so a display setting never changes the diagnosis.")
    return scan.view(slice_index, projection), f"{slice_index}/{projection}"


def kept(key: str, default) -> dict:
    """Arguments for a display control whose value outlives the runs in which it is not drawn (e.g. while a
    new explanation is asked for after a method change): the value last chosen, given as the widget's value
    and saved by its on_change. Never set through st.session_state[key]: a browser that drew the widget
    before would then re-create it at its default (toggle off, opacity 0)."""
    def save() -> None:
        st.session_state[f"_kept_{key}"] = st.session_state[key]

    return {"value": st.session_state.get(f"_kept_{key}", default), "key": key, "on_change": save}


def display_window(name: str) -> tuple[float, float] | None:
    return st.session_state.get("display_window", {}).get(f"scan_{name}")


def read_scan_once(data: bytes, name: str) -> tuple[Scan, np.ndarray | None]:
    """The uploaded scan read once per session (a rerun, e.g. a moved window slider, reuses it), with its
    colours when it is a colour photograph (else None); only the last file per name is kept, and only in this
    session's memory."""
    digest = hashlib.sha256(data).hexdigest()
    kept_scans = st.session_state.setdefault("_scans", {})
    if kept_scans.get(name, (None,))[0] != digest:
        scan = read_scan(data, name=name)
        kept_scans[name] = (digest, scan, colour_view(data, scan))
    return kept_scans[name][1:]


def labs_preview(panel: LabPanel, catalogue, title: str) -> None:
    """The labs as the model reads them: converted units, reference ranges and high/low flags."""
    table = panel.table(catalogue, measured_only=True)
    flagged = table[table["Flag"] != ""]
    used = len(table) - len(panel.refused)
    st.markdown(f"**{title}** ({used} used" + (f", {len(panel.refused)} refused" if panel.refused else "")
                + f", {table.attrs['not_measured']} not measured"
                + (f"; out of range: {', '.join(flagged['Lab'] + ' ' + flagged['Flag'])}" if len(flagged) else "") + ")")
    st.dataframe(table.style.apply(lambda r: ["color:#b91c1c;font-weight:600" if r["Flag"] or r["Value"] == "refused"
                                              else ""] * len(r), axis=1),
                 hide_index=True, height="content", width="stretch")


def uploaded_case() -> tuple[CaseInputs | None, str]:
    """Build a case from uploads; every problem is shown next to its input, nothing is stored."""
    inputs: dict = {n: None for n in names}
    refused: dict[str, dict[str, str]] = {}  # labs given but not usable, by modality (shown as refused, never assumed)
    parts: list[tuple[str, str, bytes]] = []  # what the case is made of: its cache key (core.serve.upload_key)
    for name in names:
        kind = kinds[name]
        with st.expander(f"{name} ({kind})", expanded=True):
            try:
                if kind == "image":
                    f = st.file_uploader("Image: DICOM, NIfTI, MHA/NRRD, PNG or JPEG", key=f"up_{name}")
                    if f is not None:
                        data = f.getvalue()
                        scan, colour = read_scan_once(data, f.name)
                        inputs[name], view = scan_controls(scan, f"scan_{name}")
                        if colour is not None and not scan.is_volume:
                            colours[name] = colour
                        parts += [(name, f"scan file {f.name}", data), (name, "scan view", view.encode())]
                elif kind == "text":
                    f = st.file_uploader("Text file (any encoding)", type=None, key=f"up_{name}")
                    pasted = st.text_area(f"…or paste the {name} text", key=f"paste_{name}", height=160)
                    if f is not None:
                        parts.append((name, f"note file {f.name}", f.getvalue()))
                        inputs[name] = read_note(f.getvalue(), name=f.name)
                    elif pasted.strip():
                        parts.append((name, "pasted note", pasted.encode()))
                        inputs[name] = clean_note(pasted, "pasted note")
                else:
                    catalogue = predictor.lab_catalogue(name)
                    table = "Lab" if name == "labs" else name  # the shipped model's labs; else the modality's own name
                    f = st.file_uploader(f"{table} table, CSV (wide, or long: name,value,unit)", key=f"up_{name}")
                    if f is not None:
                        parts.append((name, f"lab file {f.name}", f.getvalue()))
                        inputs[name] = read_labs(f.getvalue(), catalogue, name=f.name)
                    else:
                        first = "lab" if name == "labs" else "variable"
                        base = pd.DataFrame({first: [lab.label for lab in catalogue],
                                             "value": pd.Series([float("nan")] * len(catalogue), dtype=float),
                                             "unit": [lab.unit for lab in catalogue],
                                             "reference": [lab.ref_text() for lab in catalogue]})
                        edited = st.data_editor(base, key=f"edit_{name}", disabled=[first, "unit", "reference"],
                                                hide_index=True, height="content", placeholder="",
                                                column_config={"value": st.column_config.NumberColumn(
                                                    help="in the unit shown; leave empty if not measured")})
                        values = {lab.name: v for lab, v in zip(catalogue, edited["value"]) if pd.notna(v)}
                        if values:
                            parts.append((name, "typed labs", repr(sorted(values.items())).encode()))
                            inputs[name] = labs_from_mapping(values, catalogue, label=f"{name} table")
                if isinstance(inputs[name], Scan):
                    scan = inputs[name]
                    st.image(display_image(scan, colours.get(name), display_window(name)), caption=f"{scan.modality}, "
                             f"{scan.info.get('TransferSyntax', scan.source_format)}", width=320)
                    if scan.pixel_identifiers:
                        st.warning(f"{scan.pixel_identifiers}. The image is shown here only; it is left out of the "
                                   "downloadable report unless you confirm below that it carries no patient details.")
                elif isinstance(inputs[name], LabPanel):
                    for w in inputs[name].warnings:
                        st.warning(w)
                    refused[name] = inputs[name].refused
                    labs_preview(inputs[name], predictor.lab_catalogue(name), "As the model reads them")
            except LabError as e:  # no value usable: each refused one named; the labs are then synthesized
                st.error(str(e))
                inputs[name], refused[name] = None, e.refused
                if e.refused:
                    labs_preview(LabPanel(refused=e.refused), predictor.lab_catalogue(name), "Not used")
            except RobustMDiffError as e:
                st.error(str(e))
                inputs[name] = None
    if not any(v is not None for v in inputs.values()):
        return None, ""
    return CaseInputs("uploaded case", inputs, refused={n: r for n, r in refused.items() if r}), upload_key(parts)


source = st.radio("Start from", ["Demo case", "Upload your own"], horizontal=True, key="source")
if source == "Demo case" and not has_demo_cases():  # no data of this model here: say why, and go on with uploads
    st.info(f"No demo cases: {no_demo_cases_text()} Upload your own inputs below.")
    source = "Upload your own"
if source == "Demo case":
    demos = get_demo_cases()
    choice = st.selectbox(f"Demo case ({demo_source_text()})", [d.label for d in demos], key="demo")
    demo = demos[[d.label for d in demos].index(choice)]
    case, case_key = load_demo_case(demo.row), f"demo-{demo.case_id}"
    colours.update(demo_colours(demo.row))
    with st.expander("Inputs of this case", expanded=False):
        for name in names:  # each modality as the model reads it, by its kind
            value = case.inputs.get(name)
            if value is None:
                st.caption(f"{name}: not in this case")
            elif kinds[name] == "image":
                st.image(display_image(value, colours.get(name)), width=256, caption=name)
            elif kinds[name] == "text":
                st.markdown(f"**{name}**")
                st.text(value)
            else:
                labs_preview(value, predictor.lab_catalogue(name), name)
else:
    case, case_key = uploaded_case()
    if case is None:
        st.info("Give " + ", ".join(f"{INPUT_WORDS[kinds[n]]} for {n}" for n in names)
                + (" (any subset)" if len(names) > 1 else "") + " to get a prediction.")
        st.stop()

st.subheader("Modalities")
cols = st.columns(len(names))
absent = []
for col, name in zip(cols, names):
    available = case.inputs.get(name) is not None
    on = col.toggle(f"{name}" + ("" if available else " (missing)"), value=available, disabled=not available,
                    key=f"on_{case_key}_{name}")
    if not on:
        absent.append(name)
if len(absent) == len(names):
    st.warning("Switch on at least one modality: with nothing to read, the model will not guess.")
    st.stop()

mismatches = predictor.domain_mismatches(case, absent)
allow = False
if mismatches:
    for name, found in mismatches.items():
        st.error(f"**{name}: not the kind of scan this model was trained on.** " + "; ".join(found) + ".")
    allow = st.checkbox("Use it anyway, to explore (the result will carry a warning and mean little)",
                        key=f"allow_domain_{case_key}")
    if not allow:
        st.info("Switch that image off above, upload one of the kind the model was trained on, or override.")
        st.stop()

try:
    predicted = service.predict_job(case, case_key, absent, allow)
    pred = wait_for(predicted)
except Exception as e:  # noqa: BLE001 - shown to the user without a traceback
    fail(e)
    st.stop()

# what changed since the last switch of a modality (kept across reruns until the next switch)
state = st.session_state.setdefault("explorer", {})
if state.get("case") != case_key:
    service.cancel_session(session_key())  # another case: this session's explanation still waiting is moot
    st.session_state.pop("explain_jobs", None)
    state.clear()
    state.update(case=case_key, absent=absent, probs=pred.probabilities, previous=None)
elif state.get("absent") != absent:
    state.update(previous=state["probs"], absent=absent, probs=pred.probabilities)
previous = state.get("previous")

st.subheader("Prediction")
if pred.outside_training:
    st.error("**Outside what this model was trained on.** The answer below is unlikely to mean anything for "
             "these inputs:\n" + "\n".join(f"- {m}" for m in pred.guard_messages()), icon=":material/block:")
c1, c2 = st.columns([2, 1])
c1.plotly_chart(probability_chart(pred, previous, muted=pred.outside_training), width="stretch")
if pred.outside_training:
    c2.markdown(f"Predicted<br><span style='font-size:1.6rem;color:#9ca3af;text-decoration:line-through'>"
                f"{html.escape(display_name(pred.prediction))}</span><br><small>outside what this model was trained on</small>",
                unsafe_allow_html=True)
else:  # markdown, not st.metric: a metric cuts a long diagnosis ("Pulmonary emboli…") at common widths
    c2.markdown(f"Predicted<br><span style='font-size:1.6rem;font-weight:600'>{html.escape(display_name(pred.prediction))}"
                "</span>",
                unsafe_allow_html=True, help="the diagnosis with the highest calibrated probability")
c2.caption("kept from when this case and these modalities were first predicted" if predicted.kept
           else f"computed in {pred.latency_ms:.0f} ms on {pred.device}")
if previous:
    changed = max(pred.probabilities, key=lambda c: abs(pred.probabilities[c] - previous.get(c, 0)))
    c2.info(f"Largest change: {display_name(changed)} {previous.get(changed, 0):.1%} → {pred.probabilities[changed]:.1%}")
if pred.synthesized:
    st.markdown("**Missing modalities, synthesized in latent space**",
                help="Synthesis confidence: the probability that the answer stays the same when the real modality "
                     "is added, learned on validation cases (see the Model card for how well it holds on test cases).")
    rule = pred.next_test_column()  # the ranking's own score, where it is not the chance of change
    st.dataframe(pd.DataFrame([{"modality": m, "synthesis confidence": f"{pred.synthesized[m]['confidence']:.0%}",
                                "chance the answer changes if acquired": f"{pred.chance_of_change(m):.0%}",
                                **({rule[0]: rule[1][m]} if rule else {})}
                               for m in pred.ranked_missing()]), hide_index=True, width="stretch")
    if pred.outside_training:
        st.caption("These confidences were learned on inputs like the training data; with an input outside it "
                   "they mean little.")
    for m in pred.synthesized:
        if pred.assumed_text(m):
            st.caption(f"Synthesized {m}: {pred.assumed_text(m)}")
    for m, s in pred.synthesized.items():
        if "expected_values" in s:
            with st.expander(f"Assumed {m} values (median and 80 % interval implied by the synthesized latent)"):
                st.dataframe(pd.DataFrame([{"lab": v["label"], "assumed": f"{v['median']:g}",
                                            "80 % interval": f"{v['low']:g}–{v['high']:g}", "unit": v["unit"],
                                            "reference": v["reference"], "flag": v["flag"]}
                                           for v in s["expected_values"].values()]
                                          + [{"lab": r["label"], "assumed": "not used: your value was refused",
                                              "80 % interval": r["reason"], "unit": r["unit"], "reference": "",
                                              "flag": ""} for r in s.get("refused", {}).values()]),
                             hide_index=True, width="stretch")
    # a named modality only where the checkpoint's ranking beat chance on test views (core/inference.py)
    (st.success if pred.next_test else st.info)(pred.next_test_text())
for w in pred.warnings:
    st.warning(w)

st.subheader("Why")
c1, c2 = st.columns([2, 1])
method = c1.selectbox("Attribution method", [m for m in EXPLAIN_METHODS if m != "random"], format_func=display_name,
                      key="method", help="How each input's influence is measured: Integrated Gradients (the default; "
                      "its attributions add up to the change of the prediction), gradient × input (faster, rougher) "
                      "or SHAP (sampled coalitions of inputs).")
key = (case_key, tuple(absent), method)
explanations = st.session_state.setdefault("explanations", {})
jobs = st.session_state.setdefault("explain_jobs", {})  # running explanations outlive a rerun of the page
if c2.button("Explain this prediction", type="primary", key="explain") and key not in explanations and key not in jobs:
    jobs.clear()  # a newer request replaces this session's waiting one in the pool (asked again, it joins one running)
    jobs[key] = service.explain_job(case, case_key, absent, method, allow)
if key not in explanations and key not in jobs:
    shown = [(n, kinds[n]) for n in names if n not in absent and case.inputs.get(n) is not None]
    st.caption(f"Press the button to compute {explained_parts_text(shown)}.")
    st.stop()

status = st.empty()
slots = {"contributions": st.container(), **{n: st.container() for n in names}}  # drawn in this order


heat_display: list = []  # this run's heatmap display settings, once drawn (every image modality shares them)


def heatmap_controls(where) -> tuple[bool, float, str]:
    """Show / opacity / colour map, drawn beside the first image modality's heatmap and shared by the others (one
    set of keys: a model with two images, e.g. clinical and dermoscopic, draws them once)."""
    if heat_display:
        where.caption("Heatmap display as set above.")
        return heat_display[0]
    show = where.toggle("Show heatmap", **kept("heat_on", True))
    opacity = where.slider("Opacity", 0.0, 1.0, **kept("opacity", 0.55))
    cmap_args = kept("cmap", CMAPS[0])
    cmap = where.selectbox("Colour map", CMAPS, index=CMAPS.index(cmap_args.pop("value")), **cmap_args)
    st.session_state["heat_drawn_cmap"] = cmap  # the colour map the heatmap is drawn with (checked by tests)
    heat_display.append((show, opacity, cmap))
    return show, opacity, cmap


def draw(stage: str, exp: Explanation) -> None:
    """One part of the explanation, in its own place on the page (parts arrive cheapest first)."""
    with slots[stage]:
        if stage == "contributions":
            st.plotly_chart(contribution_chart(exp.contributions, display_name(exp.target)), width="stretch")
            st.caption(REMOVED.format(target=display_name(exp.target)) + ".")
            st.caption(held_fixed_text([(c["modality"], kinds[c["modality"]]) for c in exp.present_contributions()]))
            if missing_contributions_text(exp.contributions):
                st.caption(missing_contributions_text(exp.contributions))
        elif stage in exp.image:
            c1, c2 = st.columns([2, 1])
            show, opacity, cmap = heatmap_controls(c2)
            gray = display_image(case.inputs[stage], colours.get(stage), display_window(stage))
            c1.image(overlay(gray, exp.image[stage], opacity if show else 0.0, cmap, fov=exp.image_fov.get(stage),
                             cells=exp.image_resolution.get(stage)),
                     caption=f"{stage}: {display_name(exp.image_method[stage])}", width=420)
            c1.html(image_legend_html(exp, stage, cmap))
            c1.caption(completeness_text(exp, stage), help=COMPLETENESS)
        elif stage in exp.note:
            st.markdown(f"**{stage}**")
            st.caption(" ".join(filter(None, (completeness_text(exp, stage) + ".", note_units_text(exp, stage)))),
                       help=COMPLETENESS)
            st.html(legend_html() + note_html(case.inputs[stage], exp.note[stage], exp.note_phrases.get(stage)))
        elif stage in exp.labs:
            st.plotly_chart(lab_chart(exp.labs[stage], display_name(exp.method), stage), width="stretch")
            st.caption(completeness_text(exp, stage), help=COMPLETENESS)


if key in explanations:
    exp = explanations[key]
    for stage in ["contributions", *(n for n in names if n in exp.image or n in exp.note or n in exp.labs)]:
        draw(stage, exp)
else:  # draw each part as the worker reports it; a rerun meanwhile picks the same job up again
    job, drawn = jobs[key], 0
    while True:
        finished = job.done()
        stages = list(job.stages)
        for stage in stages[drawn:]:
            draw(stage, job.partial)
        drawn = len(stages)
        if finished:
            break
        status.caption(f":material/hourglass_top: {job.status()}")
        time.sleep(0.15)
    del jobs[key]
    try:
        exp = explanations[key] = job.result()
    except Exception as e:  # noqa: BLE001 - shown to the user without a traceback
        status.empty()
        fail(e)
        st.stop()
    # what the user met: the wait for a worker, the first part on the page, the whole (read by bench --serve)
    st.session_state.setdefault("explain_timing", {})[key] = {
        "waited": job.waited(), "first_part": (job.stage_times[0] if job.stage_times else job.finished) - job.submitted,
        "total": job.finished - job.submitted}
waited = st.session_state.get("explain_timing", {}).get(key, {}).get("waited", 0.0)
status.caption(f"Explained in {exp.seconds:.1f} s" + (f" (after {waited:.1f} s waiting for other users)" if waited >= 0.5
               else "") + f". Attributions explain log p({display_name(exp.target)}).")
cmap = st.session_state.get("heat_drawn_cmap", CMAPS[0]) if exp.image else CMAPS[0]
annotated = [n for n in exp.image if case.inputs[n].pixel_identifiers]
include = bool(annotated) and st.checkbox(
    f"Include the image in the report: I checked that its pixels carry no patient details ({', '.join(annotated)})",
    key=f"include_pixels_{case_key}")
st.download_button("Download case report (HTML)", report_html(exp, case.inputs, cmap=cmap, include_annotated=include,
                                                               colour=colours),
                   file_name="robustmdiff_report.html", mime="text/html", key="report", on_click="ignore")
