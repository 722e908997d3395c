"""The Case explorer on a model of your own (issue 26): with a checkpoint of one text modality, of three tabular
groups, or of two colour images and a table open, a demo case of its own test split is predicted as one of its
classes, switching a modality off changes the answer, "Explain this prediction" draws a part per modality (a
heatmap per image, the highlighted text, a chart per tabular group), and the downloaded report names every
modality and nothing of the shipped model or its cohort. One upload per modality type: an image (derm, shown in
colour), a pasted text (reports, on a copy whose data is not on this machine: no demo cases, and the page says
why), a lab group as CSV (breast_cancer)."""

from __future__ import annotations

import base64
import io
import json
import shutil

import numpy as np
import pytest
import streamlit as st
from PIL import Image
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

from core.checkpoint import read_meta, write_meta
from core.names import CLASSES, display_name
from core.paths import ROOT

APP = str(ROOT / "app.py")


@pytest.fixture
def media(monkeypatch) -> dict[str, bytes]:
    """Every file the pages hand to Streamlit's media store (images, downloads), by id: AppTest keeps no copy."""
    kept: dict[str, bytes] = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def load_and_get_id(self, path_or_data, mimetype, kind, filename=None):
        file_id = original(self, path_or_data, mimetype, kind, filename)
        kept[file_id] = self._files_by_id[file_id].content
        return file_id

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", load_and_get_id)
    return kept


def from_url(media: dict[str, bytes], url: str) -> bytes:
    return media[url.rsplit("/", 1)[-1].split(".")[0]]


@pytest.fixture
def explorer(monkeypatch, tmp_path):
    def open_explorer(checkpoint) -> AppTest:
        monkeypatch.setenv("RMD_CHECKPOINT", str(checkpoint))
        monkeypatch.delenv("RMD_DATA", raising=False)
        monkeypatch.setenv("RMD_REVIEWER_CODE", "demo")
        monkeypatch.setenv("RMD_REVIEW_DB", str(tmp_path / "review.sqlite3"))
        monkeypatch.setenv("RMD_REVIEW_WARM", "0")
        monkeypatch.setenv("RMD_WARM_UP", "0")
        st.cache_resource.clear()
        at = AppTest.from_file(APP, default_timeout=600).run()
        at.switch_page("pages/case_explorer.py").run()
        ok(at)
        return at

    yield open_explorer
    st.cache_resource.clear()  # the next test's app opens its own model


def ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def predicted(at: AppTest) -> str | None:
    shown = [m.value for m in at.markdown if m.value.startswith("Predicted<br>")]
    return shown[0].split("'>")[1].split("</span>")[0] if shown else None


def page_text(at: AppTest) -> str:
    """Everything the page drew (text, tables, charts' specs), as one string."""
    return "\n".join(str(getattr(node, "proto", "")) for node in at._tree)


def shipped_markers(own_classes: list[str]) -> list[str]:
    """What would betray the shipped model or its cohort on another model's page: the shipped classes the open
    model does not have (as data and as shown), the cohort named."""
    own = {c.lower() for c in own_classes} | {display_name(c).lower() for c in own_classes}
    return [n for c in CLASSES for n in (c, display_name(c)) if n.lower() not in own] + ["embedded cohort",
                                                                                         "synthetic cohort"]


def is_colour(png: bytes) -> bool:
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
    return int(np.abs(rgb[..., 0] - rgb[..., 2]).max()) > 30


@pytest.mark.parametrize("name", ["reports", "breast_cancer", "derm"])
def test_a_demo_case_is_predicted_switched_explained_and_reported(own_model_of, explorer, media, name):
    checkpoint, _ = own_model_of(name)
    meta = read_meta(checkpoint)
    modalities = [(m["name"], m["type"]) for m in meta["spec"]["modalities"]]
    classes = meta["data_info"]["classes"]
    at = explorer(checkpoint)
    demo = at.selectbox(key="demo")
    assert "embedded cohort" not in demo.label and meta["spec"]["name"] in demo.label
    assert predicted(at) in {display_name(c) for c in classes}
    preview = next(e for e in at.expander if e.label == "Inputs of this case")  # each modality by its kind
    assert sorted(c for img in preview.get("image") for c in img.captions) == sorted(n for n, k in modalities if k == "image")
    assert all(is_colour(from_url(media, img.value[0])) for img in preview.get("image"))  # the photographs' colours
    assert len(preview.get("text")) == sum(k == "text" for _, k in modalities)
    assert [m.value.split("**")[1] for m in preview.markdown if "used" in m.value] == [n for n, k in modalities
                                                                                        if k == "tabular"]
    shipped = shipped_markers(classes)
    assert not [s for s in shipped if s in page_text(at)]
    assert [t.label for t in at.toggle] == [n for n, _ in modalities]

    probs = dict(at.session_state["explorer"]["probs"])
    at.toggle(key=at.toggle[0].key).set_value(False).run()
    if len(modalities) == 1:  # nothing left to read: the page says so and predicts nothing
        assert any("Switch on at least one modality" in w.value for w in at.warning)
        at.toggle(key=at.toggle[0].key).set_value(True).run()
    else:
        after = at.session_state["explorer"]["probs"]
        assert max(abs(after[c] - probs[c]) for c in probs) > 1e-4
        assert at.toggle[0].label in at.session_state["explorer"]["absent"]
    ok(at)

    at.button(key="explain").click().run()
    ok(at)
    present = [(n, k) for n, k in modalities if n not in at.session_state["explorer"]["absent"]]
    exp = next(iter(at.session_state["explanations"].values()))
    assert exp.method == "integrated_gradients"
    images = [n for n, k in present if k == "image"]
    heatmaps = [img for img in at.get("image") if any(c.startswith(tuple(f"{n}: " for n in images)) for c in img.captions)]
    assert sorted(c.split(":")[0] for img in heatmaps for c in img.captions) == sorted(images)  # one per image, its own
    if images:
        assert all(is_colour(from_url(media, img.value[0])) for img in heatmaps)  # photographs stay in colour
    texts = [n for n, k in present if k == "text"]
    assert len([h for h in at.get("html") if "white-space:pre-wrap" in h.proto.body]) == len(texts)
    charts = [json.loads(c.proto.spec)["layout"].get("title", {}).get("text", "") for c in at.get("plotly_chart")]
    for n, k in present:
        if k == "tabular":
            assert sum(t.startswith(f"{display_name(n)} ranked by influence") for t in charts) == 1
    assert any(all(n in c.value for n, _ in present) and "baseline" in c.value for c in at.caption)  # what is varied

    report = from_url(media, at.get("download_button")[0].proto.url).decode()
    assert all(f"<h2>{n}" in report for n, _ in present) and all(n in report for n, _ in modalities)
    assert not [s for s in shipped if s in report], [s for s in shipped if s in report]
    pictures = report.split("data:image/png;base64,")[1:]
    assert len(pictures) == len(images)
    assert all(is_colour(base64.b64decode(p.split("'")[0])) for p in pictures)  # photographs in colour there too
    assert not [s for s in shipped if s in page_text(at)], [s for s in shipped if s in page_text(at)]
    assert "None" not in report and ">nan<" not in report


def jpeg(seed: int) -> bytes:
    """A colour photograph-like JPEG: a reddish-brown blob on skin tones."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:96, :96]
    blob = ((yy - 48) ** 2 + (xx - 40) ** 2 < 600)[..., None]
    rgb = np.where(blob, [120, 60, 40], [225, 180, 150]) + rng.normal(0, 8, (96, 96, 3))
    out = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(out, format="JPEG")
    return out.getvalue()


def test_an_uploaded_photograph_is_predicted_shown_and_explained_in_colour(own_model_of, explorer, media):
    """derm: one clinical photograph uploaded, nothing else: predicted (the others synthesized), its preview and
    its heatmap drawn in colour though the model reads grey."""
    checkpoint, _ = own_model_of("derm")
    at = explorer(checkpoint)
    at.radio(key="source").set_value("Upload your own").run()
    assert {u.key for u in at.file_uploader} == {"up_clinic", "up_derm", "up_patient"}
    at.file_uploader(key="up_clinic").set_value(("lesion.jpg", jpeg(1), "image/jpeg")).run()
    assert not at.exception, [e.value for e in at.exception]
    assert predicted(at) in {display_name(c) for c in read_meta(checkpoint)["data_info"]["classes"]}
    assert at.session_state["explorer"]["absent"] == ["derm", "patient"]
    preview = [img for img in at.get("image") if any(c.startswith("OT") for c in img.captions)]
    assert len(preview) == 1 and is_colour(from_url(media, preview[0].value[0]))
    at.button(key="explain").click().run()
    assert not at.exception, [e.value for e in at.exception]
    heatmaps = [img for img in at.get("image") if any(c.startswith("clinic: ") for c in img.captions)]
    assert len(heatmaps) == 1 and is_colour(from_url(media, heatmaps[0].value[0]))


def test_a_pasted_text_without_demo_data_says_why_and_predicts(own_model_of, explorer, tmp_path):
    """reports, opened from a copy whose recorded data is not on this machine: the Demo case choice says why
    there are none and the page goes on with uploads; a pasted report is predicted."""
    checkpoint, _ = own_model_of("reports")
    copy = tmp_path / "elsewhere"
    shutil.copytree(checkpoint, copy)
    meta = read_meta(copy)  # as if the checkpoint had been copied to a machine without its data
    write_meta(copy, {**meta, "data_source": {"folder": "/nowhere/reports", "spec": "/nowhere/reports/spec.yaml"}})
    at = explorer(copy)
    assert any("No demo cases" in i.value and "RMD_DATA" in i.value for i in at.info)
    assert "demo" not in [s.key for s in at.selectbox]
    assert [u.key for u in at.file_uploader] == ["up_report"]
    at.text_area(key="paste_report").input("INDICATION: cough. FINDINGS: Right apical pneumothorax. Deep sulcus "
                                           "sign on the left.").run()
    ok(at)  # (a text like the training reports: not flagged by the guard)
    assert predicted(at) in {display_name(c) for c in meta["data_info"]["classes"]}


def test_one_uploaded_table_of_three_and_the_assumed_values_of_the_others(own_model_of, explorer):
    """breast_cancer: the `mean` group as CSV; `error` and `worst` synthesized, their assumed values listed with
    empty units shown empty (no None, no nan), and every table named by its group."""
    checkpoint, data = own_model_of("breast_cancer")
    at = explorer(checkpoint)
    at.radio(key="source").set_value("Upload your own").run()
    labels = {u.key: u.label for u in at.file_uploader}
    assert labels["up_mean"].startswith("mean table") and "Lab table" not in " ".join(labels.values())
    csv = "name,value\n" + "\n".join(f"{k},{v}" for k, v in [
        ("mean_radius", 17.99), ("mean_texture", 10.38), ("mean_perimeter", 122.8), ("mean_area", 1001.0),
        ("mean_smoothness", 0.1184), ("mean_compactness", 0.2776), ("mean_concavity", 0.3001),
        ("mean_concave_points", 0.1471), ("mean_symmetry", 0.2419), ("mean_fractal_dimension", 0.07871)])
    at.file_uploader(key="up_mean").set_value(("mean.csv", csv.encode(), "text/csv")).run()
    ok(at)
    assert predicted(at) in {"Benign", "Malignant"}
    assert sorted(at.session_state["explorer"]["absent"]) == ["error", "worst"]
    tables = [d.value for d in at.dataframe]  # (the editors of the groups not uploaded are empty: left out)
    assumed = [t for t in tables if "80 % interval" in t.columns]
    preview = [t.data if hasattr(t, "data") else t for t in tables if "Flag" in t.columns]  # as the model reads them
    assert len(assumed) == 2 and all(len(t) == 10 for t in assumed) and len(preview) == 1 and len(preview[0]) == 10
    for t in assumed + preview:
        shown = t.to_string()
        assert "None" not in shown and "nan" not in shown.replace("nan", "").lower() and "NaN" not in shown, shown
    assumed_lines = [c.value for c in at.caption if c.value.startswith("Synthesized ")]
    assert len(assumed_lines) == 2 and not any("  " in c or "None" in c for c in assumed_lines)  # empty units: no gap
    assert [e.label for e in at.expander if e.label.startswith("Assumed")] == ["Assumed error values (median and 80 % "
                                                                               "interval implied by the synthesized latent)",
                                                                               "Assumed worst values (median and 80 % "
                                                                               "interval implied by the synthesized latent)"]
