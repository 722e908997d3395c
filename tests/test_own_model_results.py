"""Issue 26: the Robustness lab and the Model card show the open model's own results (its meta.json, and the
evaluation recorded beside it by `python -m core evaluate --checkpoint DIR`), never the shipped model's; where
none exists yet, the lab gives the command that makes it and scores the checkpoint in a process of its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from core.checkpoint import read_meta
from core.evaluation import evaluate
from core.evaluation.harness import condition_label
from core.names import display_name
from core.open_model import evaluation_dir, score_dir, shown
from core.paths import DEFAULT_CHECKPOINT, ROOT

APP = str(ROOT / "app.py")


def page_text(at: AppTest) -> str:
    """Everything the page drew (text, tables, charts' specs), as one string."""
    return "\n".join(str(getattr(node, "proto", "")) for node in at._tree)


def shipped_markers(own_classes: list[str]) -> list[str]:
    """What would betray the shipped model or the embedded cohort on another model's page."""
    meta = read_meta(DEFAULT_CHECKPOINT)
    own = {c.lower() for c in own_classes} | {display_name(c).lower() for c in own_classes}
    return ([n for c in meta["spec"]["classes"] for n in (c, display_name(c)) if n.lower() not in own]
            + [meta["weights_sha256"][:8], meta["data_fingerprint"][:8], "embedded cohort", "synthetic cohort",
               "600-case", "checkpoints/default"])


@pytest.fixture
def copy_of(own_model_of, tmp_path):
    """A private copy of an own model's checkpoint: what is written beside it stays with this test."""
    def copy(name: str):
        checkpoint, _ = own_model_of(name)
        return shutil.copytree(checkpoint, tmp_path / name / "checkpoint")
    return copy


@pytest.fixture
def open_page(monkeypatch, tmp_path):
    monkeypatch.setenv("RMD_REVIEWER_CODE", "demo")
    monkeypatch.setenv("RMD_REVIEW_DB", str(tmp_path / "review.sqlite3"))
    monkeypatch.setenv("RMD_REVIEW_WARM", "0")
    monkeypatch.setenv("RMD_WARM_UP", "0")

    def opener(checkpoint, page: str) -> AppTest:
        monkeypatch.setenv("RMD_CHECKPOINT", str(checkpoint))
        st.cache_resource.clear()
        at = AppTest.from_file(APP, default_timeout=600).run()
        at.switch_page(page).run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    yield opener
    st.cache_resource.clear()  # the next test's app opens its own model


def test_an_own_models_quick_evaluation_is_what_the_lab_and_the_model_card_show(copy_of, open_page):
    checkpoint = copy_of("reports")
    meta = read_meta(checkpoint)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "core", "evaluate", "--checkpoint", str(checkpoint), "--quick",
                           "--methods", "robustmdiff,early_zero"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=os.environ | {"RMD_FIGURE_PNG": "0"})  # the pages draw the figures
    seconds = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr[-2000:]
    print(f"evaluate --quick on the reports model: {seconds:.1f} s")
    result_file = evaluation_dir(checkpoint, quick=True) / "results.json"
    assert result_file.exists()  # beside the checkpoint, where the pages look
    forbidden = shipped_markers(meta["spec"]["classes"]) + ["EfficientNet", "Scan", "Labs"]

    at = open_page(checkpoint, "pages/robustness_lab.py")
    text = page_text(at)
    comparison = next(d.value for d in at.dataframe if "AVG" in d.value.columns)
    assert set(comparison.Method) == {"RobustMDiff", display_name("early_zero")}
    assert display_name("report") in comparison.columns  # the model's one modality, as a column
    n_complete = json.loads(result_file.read_text())["n_test_complete"]
    assert any(f"on the {n_complete} complete test cases" in c.value for c in at.caption)
    assert any("this quick evaluation" in i.value and "(chest-reports, 150 cases" in i.value
               for i in at.info)  # which model and data the table belongs to
    assert at.tabs[0].label == "This model's evaluation"
    assert any(f"evaluate --checkpoint {shown(checkpoint)} --quick" in m.value for m in at.markdown)
    assert any("regime study" in i.value and "not shown here" in i.value for i in at.info)
    leaked = [m for m in forbidden if m in text]
    assert not leaked, leaked

    at = open_page(checkpoint, "pages/model_card.py")
    text = page_text(at)
    metrics = next(d.value for d in at.dataframe if "Modalities" in d.value.columns)
    assert set(metrics.Modalities) == {condition_label(k) for k in meta["test_metrics"]}
    assert list(metrics.Cases) == [v["n"] for v in meta["test_metrics"].values()]
    comparison = next(d.value for d in at.dataframe if "AVG" in d.value.columns)
    assert set(comparison.Method) == {"RobustMDiff", display_name("early_zero")}
    assert "frozen all-MiniLM-L6-v2 for notes" in text and "chest-reports" in text
    assert shown(checkpoint) in text and "evaluation-quick/" in text  # the open checkpoint's own files
    leaked = [m for m in forbidden if m in text]
    assert not leaked, leaked


def test_without_an_evaluation_the_lab_gives_its_command_and_scores_the_model(copy_of, open_page, monkeypatch):
    checkpoint = copy_of("breast_cancer")
    monkeypatch.setattr(evaluate, "_STARTED", 0)  # this test is the server's first heavy job
    monkeypatch.setattr(evaluate, "_JOB", None)
    monkeypatch.delenv("RMD_ADMIN_CODE", raising=False)
    at = open_page(checkpoint, "pages/robustness_lab.py")
    assert any(f"`python -m core evaluate --checkpoint {shown(checkpoint)}`" in i.value for i in at.info)
    assert not any("AVG" in d.value.columns for d in at.dataframe)  # no comparison of another model instead
    at.button(key="run_score").click().run()
    job = evaluate.current_quick()
    try:
        assert job is not None and job.kind == "scoring" and job.out == score_dir(checkpoint)
        deadline = time.time() + 120
        while not any({"AUROC", "ECE"} <= set(d.value.columns) for d in at.dataframe):
            assert time.time() < deadline, "the scoring did not finish in 120 s"
            assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
            time.sleep(1)
            at.run()
        table = next(d.value for d in at.dataframe if {"AUROC", "ECE"} <= set(d.value.columns))
        score = json.loads((score_dir(checkpoint) / "score.json").read_text())
        assert any(f"{score['n_test']} test cases" in m.value for m in at.markdown)
        patterns = [condition_label(r["condition"]) for r in score["rows"] if r["group"] == "all"]
        assert list(table["Modalities given"]) == patterns and len(patterns) == 7 + 3  # 2^3-1 combinations, random
        assert table.AUROC.between(0, 100).all()  # 30 %, 50 % and natural missingness; in %
        news = (score_dir(checkpoint) / evaluate.PROGRESS_LOG).read_text()
        assert '"threads": 1' in news and "scoring:" in news  # its own process, one thread, with progress
    finally:
        if job is not None:
            job.stop(wait=2.0)
