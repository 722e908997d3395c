"""A model of your own in the app (issue 26): three checkpoints of other shapes than the shipped one (one text
modality; three tabular groups; two images and a table), each opened with RMD_CHECKPOINT: every page renders,
the sidebar names the model, and no page shows anything of the embedded cohort or the shipped model. Which
model and data are opened, and what is refused, is core/open_model.py."""

from __future__ import annotations

import shutil

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from core.checkpoint import read_meta
from core.errors import RobustMDiffError
from core.names import display_name
from core.open_model import OpenModel, evaluation_dir
from core.paths import ASSETS, DEFAULT_CHECKPOINT, ROOT

APP = str(ROOT / "app.py")
PAGES = ["pages/case_explorer.py", "pages/robustness_lab.py", "pages/review.py", "pages/model_card.py"]


def page_text(at: AppTest) -> str:
    """Everything the page drew (text, tables, charts' specs), as one string."""
    return "\n".join(str(getattr(node, "proto", "")) for node in at._tree)


def shipped_markers(open_classes: list[str]) -> list[str]:
    """What would betray the shipped model or its cohort on a page of another model: its classes the open model
    does not have (as the pages write them), its checksums, the cohort named."""
    meta = read_meta(DEFAULT_CHECKPOINT)
    own = {c.lower() for c in open_classes} | {display_name(c).lower() for c in open_classes}
    classes = [n for c in meta["data_info"]["classes"] for n in (c, display_name(c)) if n.lower() not in own]
    return classes + [meta["weights_sha256"][:8], meta["data_fingerprint"][:8], "embedded cohort", "synthetic cohort",
                      "checkpoints/default"]


@pytest.fixture
def own_app(monkeypatch, tmp_path):
    def open_app(checkpoint, data=None) -> AppTest:
        monkeypatch.setenv("RMD_CHECKPOINT", str(checkpoint))
        if data is not None:
            monkeypatch.setenv("RMD_DATA", str(data))
        monkeypatch.setenv("RMD_REVIEWER_CODE", "demo")
        monkeypatch.setenv("RMD_REVIEW_DB", str(tmp_path / "review.sqlite3"))
        monkeypatch.setenv("RMD_REVIEW_WARM", "0")
        monkeypatch.setenv("RMD_WARM_UP", "0")
        st.cache_resource.clear()
        return AppTest.from_file(APP, default_timeout=600)

    yield open_app
    st.cache_resource.clear()  # the next test's app opens its own model


@pytest.mark.parametrize("name", ["reports", "breast_cancer", "derm"])
def test_every_page_of_an_own_model_shows_only_that_model(own_model_of, own_app, name):
    checkpoint, _ = own_model_of(name)
    meta = read_meta(checkpoint)
    at = own_app(checkpoint).run()
    markers = shipped_markers(meta["data_info"]["classes"])
    sidebar = "\n".join(m.value for m in at.sidebar.markdown)  # drawn by app.py (AppTest's page switches run a page alone)
    assert "Model open" in sidebar and meta["spec"]["name"] in sidebar and str(checkpoint) in sidebar, sidebar
    for page in PAGES:
        if page != PAGES[0]:
            at.switch_page(page).run()
        assert not at.exception, (page, [e.value for e in at.exception])
        text = page_text(at)
        shown = [m for m in markers if m.lower() in text.lower()]
        assert not shown, (page, shown)
    at.switch_page(PAGES[0]).run()
    assert any(display_name(c) in page_text(at) for c in meta["data_info"]["classes"])  # its own classes are shown


def test_a_folder_that_is_not_a_checkpoint_is_refused_in_words(own_app, tmp_path):
    at = own_app(tmp_path).run()  # an empty folder
    assert not at.exception
    assert any("cannot be opened" in e.value and "not a checkpoint folder" in e.value for e in at.error)
    at = own_app(tmp_path / "nowhere").run()
    assert any("no such folder" in e.value for e in at.error)


def test_data_moved_away_leaves_uploads_and_says_why(own_model_of, own_app, tmp_path):
    """A checkpoint copied to another machine without its data: the app opens, demo cases say why there are none."""
    checkpoint, data = own_model_of("reports")
    copy = tmp_path / "ckpt"
    shutil.copytree(checkpoint, copy)
    opened = OpenModel.from_environment({"RMD_CHECKPOINT": str(copy)})
    assert opened.data is not None and opened.data.resolve() == (data / "spec.yaml").resolve()  # recorded data
    other = OpenModel.from_environment({"RMD_CHECKPOINT": str(copy), "RMD_DATA": str(tmp_path / "elsewhere")})
    with pytest.raises(RobustMDiffError):
        other.dataset()
    derm_checkpoint, derm_data = own_model_of("derm")
    wrong = OpenModel.from_environment({"RMD_CHECKPOINT": str(copy), "RMD_DATA": str(derm_data)})
    with pytest.raises(RobustMDiffError, match="modalities"):  # another data set's modalities: refused in words
        wrong.dataset()
    at = own_app(copy, tmp_path / "elsewhere").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Case explorer"


def test_where_results_of_a_model_live(tmp_path):
    shipped = OpenModel.from_environment({})
    assert shipped.shipped and shipped.checkpoint == DEFAULT_CHECKPOINT and shipped.data is None
    assert shipped.evaluation_dirs()[0] == ASSETS / "evaluation"
    assert evaluation_dir(tmp_path) == tmp_path / "evaluation"
    assert evaluation_dir(tmp_path, quick=True) == tmp_path / "evaluation-quick"
    assert shipped.describe(read_meta(DEFAULT_CHECKPOINT))["name"] == "shipped default"
