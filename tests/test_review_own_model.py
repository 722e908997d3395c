"""The explanation review study runs on the model the app opened (issue 26): its reference is the open
checkpoint, its comparison models those trained next to it (DIR/comparison/NAME), its cases come from that
model's data, its missing-model commands name that model's paths and data, and its ratings are stored under
that study, never mixed with the shipped model's. A real breast-cancer checkpoint (tests/own_models.py), one
tiny late-fusion model trained beside a copy of it, a real SQLite store and the real page; nothing mocked."""

from __future__ import annotations

import csv
import io
import re
import shutil

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from core.checkpoint import read_meta
from core.cli.train import method_named, record_method
from core.data.dataset import Dataset
from core.demo import study_cases
from core.open_model import OpenModel
from core.paths import DEFAULT_CHECKPOINT, ROOT
from core.review.export import ratings_csv
from core.review.models import SHIPPED, cohort_spec, review_models, study_of, train_command, with_study
from core.review.prepared import fingerprint
from core.review.store import Item, ReviewStore

APP = str(ROOT / "app.py")
# the shipped model and its embedded cohort: its classes, case ids, modalities and folder
SHIPPED_TRACES = re.compile(r"no_acute_disease|No acute disease|pneumonia|heart_failure|pulmonary_embolism|"
                            r"pneumothorax|tuberculosis|aortic_dissection|RMD-\d{5}|checkpoints/default|"
                            r"embedded synthetic cohort", re.IGNORECASE)


@pytest.fixture(scope="module")
def own_study(own_model_of, tmp_path_factory):
    """A copy of the breast-cancer checkpoint (the shared one stays untouched) with a tiny late-fusion
    comparison model trained next to it, as `train --method late_fusion --out DIR/comparison/late_fusion` does."""
    from own_models import tiny_config

    from core.training import train

    checkpoint, data = own_model_of("breast_cancer")
    model = tmp_path_factory.mktemp("own-study") / "model"
    shutil.copytree(checkpoint, model)
    out = model / "comparison" / "late_fusion"
    train(data, method_named("late_fusion").change(tiny_config()), out, device="cpu", progress=False,
          command="tests: late_fusion beside breast_cancer")
    record_method(out, "late_fusion")
    return model, data, out


def test_the_study_is_the_open_models(own_study):
    model, data, comparison = own_study
    opened = OpenModel.from_environment({"RMD_CHECKPOINT": str(model)})
    ds = opened.dataset()
    study = study_of(opened, ds.manifest.to_csv(index=False))
    assert not study.shipped and study.key.startswith("breast-cancer-") and study.reference == model
    found = review_models(cohort_spec(ds), study)
    assert [m.path for m in found.models] == [model, comparison]  # the open model first, then the one beside it
    assert [m.label for m in found.models] == ["RobustMDiff", "Late fusion"] and not found.skipped
    assert found.names == [f"robustmdiff@{study.key}", f"late_fusion@{study.key}"]
    # what is missing is trained next to the open model, on its data
    assert found.missing == ["dropout_0.5"]
    command = train_command("dropout_0.5", study)
    assert f"--out {model}/comparison/dropout_0.5" in command and f"--data {data}" in command
    assert "checkpoints/" not in command
    cases = study_cases(ds)
    test_rows = set(ds.indices("test").tolist())
    assert cases and all(c.row in test_rows and c.case_id.startswith("bc") for c in cases)
    assert {c.diagnosis for c in cases} == {"benign", "malignant"}
    # prepared explanations are kept per checkpoint and data: another model's study never reads the shipped one's
    shipped_meta, manifest = read_meta(DEFAULT_CHECKPOINT), ds.manifest.to_csv(index=False)
    ids = [c.case_id for c in cases]
    mine = fingerprint(found.models[0].meta, manifest, ids)
    assert mine != fingerprint(shipped_meta, manifest, ids)
    assert mine != fingerprint(found.models[0].meta, manifest.replace("bc1", "bc01"), ids)  # other data
    assert mine != fingerprint(found.models[1].meta, manifest, ids)
    # RMD_REVIEW_MODELS still overrides the line-up (here: the open model alone)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RMD_REVIEW_MODELS", str(model))
        assert review_models(cohort_spec(ds), study).names == [f"robustmdiff@{study.key}"]


def test_ratings_of_two_studies_stay_apart(own_study, tmp_path):
    model, _, _ = own_study
    opened = OpenModel.from_environment({"RMD_CHECKPOINT": str(model)})
    study = study_of(opened, opened.dataset().manifest.to_csv(index=False))
    store = ReviewStore(tmp_path / "review.sqlite3")
    store.note_study(study.key, study.describe())
    store.save("alice", Item("c1", "shap"), 5, 5, 5)  # the shipped study
    store.save("alice", Item("c1", "shap", study.stored("robustmdiff")), 1, 1, 1)  # same case id, method, name
    every = store.all_ratings()
    assert len(every) == 2  # nothing overwritten
    assert [r["relevance"] for r in SHIPPED.local(every)] == [5]
    mine = study.local(every)
    assert [(r["model"], r["relevance"]) for r in mine] == [("robustmdiff", 1)]
    rows = list(csv.DictReader(io.StringIO(ratings_csv(with_study(every, store.studies())))))
    by_relevance = {r["relevance"]: r for r in rows}
    assert by_relevance["1"]["study"] == study.describe() and str(model) in by_relevance["1"]["study"]
    assert "embedded synthetic cohort" in by_relevance["5"]["study"]
    assert {r["model"] for r in rows} == {"robustmdiff"}


def _texts(node) -> list[str]:
    out = [str(node.proto)] if getattr(node, "proto", None) is not None else []
    for child in getattr(node, "children", {}).values():
        out += _texts(child)
    return out


def _ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def test_a_reviewer_rates_the_open_models_explanations(own_study, tmp_path, monkeypatch):
    model, data, _ = own_study
    db = tmp_path / "review.sqlite3"
    monkeypatch.setenv("RMD_CHECKPOINT", str(model))
    monkeypatch.delenv("RMD_DATA", raising=False)
    monkeypatch.delenv("RMD_REVIEW_MODELS", raising=False)
    monkeypatch.setenv("RMD_DATA_DIR", str(tmp_path / "data"))  # the embedded cohort, if opened, would land here
    for k, v in {"RMD_REVIEWER_CODE": "demo", "RMD_ADMIN_CODE": "boss", "RMD_REVIEW_DB": str(db),
                 "RMD_REVIEW_WARM": "0", "RMD_WARM_UP": "0"}.items():
        monkeypatch.setenv(k, v)
    st.cache_resource.clear()
    at = AppTest.from_file(APP, default_timeout=600)
    _ok(at.run())
    _ok(at.switch_page("pages/review.py").run())
    at.text_input(key="reviewer_name").input("alice")
    at.text_input(key="reviewer_code").input("demo")
    at.text_input(key="reviewer_pin").input("4321")
    at.text_input(key="reviewer_pin_again").input("4321")
    _ok(next(b for b in at.button if b.label == "Sign in").click().run())
    assert at.session_state["reviewer"] == "alice"
    for scale, value in (("relevance", 4), ("usefulness", 3), ("trust", 2)):
        at.radio(key=f"{scale}_0").set_value(value)
    _ok(at.run())
    _ok(next(b for b in at.button if b.label == "Save rating").click().run())
    item = next(m.value for m in at.markdown if m.value.startswith("**Case "))
    assert "Benign" in item or "Malignant" in item  # the open model's classes

    ds = Dataset.open(data)
    study = study_of(OpenModel.from_environment(), ds.manifest.to_csv(index=False))
    rows = ReviewStore(db).all_ratings()
    assert len(rows) == 1 and rows[0]["relevance"] == 4
    assert rows[0]["case_id"] in {c.case_id for c in study_cases(ds)}  # a breast-cancer study case
    assert rows[0]["model"] in {f"robustmdiff@{study.key}", f"late_fusion@{study.key}"}

    # the study admin reads which model and data the study runs on, and this study's rating
    at.text_input(key="admin_code").input("boss")
    _ok(next(b for b in at.button if b.label == "Open results").click().run())
    runs_on = next(m.value for m in at.markdown if m.value.startswith("**This study runs on**"))
    assert str(model) in runs_on and "breast_cancer" in runs_on and study.key in runs_on
    assert any("1 ratings from 1 reviewers" in c.value for c in at.caption)
    shown = " ".join(_texts(at._tree))
    assert "dropout_0.5" in shown and f"--out {model}/comparison/dropout_0.5" in shown  # the missing one
    assert not SHIPPED_TRACES.findall(shown), SHIPPED_TRACES.findall(shown)[:5]
    assert not (tmp_path / "data" / "cohort").exists()  # the embedded cohort was never opened
