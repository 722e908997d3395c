"""The review study's second blinded factor, the model: `train --method` writes a comparison checkpoint,
the study finds its models, old databases migrate, the queue covers every (case, model, method) once, the
page names no model or method, and the paired test finds (only) real differences. Real SQLite files and a
really trained (quick) late-fusion checkpoint; nothing of the store is mocked."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import random
import re
import shutil
import sqlite3
import time

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from core.checkpoint import read_meta, write_meta
from core.cli import main
from core.explain.explanation import METHODS
from core.paths import DEFAULT_CHECKPOINT, ROOT
from core.review import auth
from core.review.export import results_csv
from core.review.models import review_models, train_command
from core.review.stats import paired_tests, per_model, per_model_method
from core.review.store import SCHEMA_VERSION, Item, ReviewStore

PAGE = str(ROOT / "pages" / "review.py")
SCALES = ("relevance", "usefulness", "trust")
CHEAP = ("random", "gradient_x_input")  # the quick explanation methods, for the page tests
# what a blinded page must never show: model names and labels, explanation method names and labels
HIDDEN = re.compile(r"robustmdiff|late[_ ]fusion|dropout|early[_ ]|masked[_ ]attention|integrated[_ ]gradients|"
                    r"gradient[_ ]?(x|×)[_ ]?input|(?<![a-z])(shap|random)(?![a-z])", re.IGNORECASE)  # "_random" too


# ---- train --method ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def late_fusion(small_cohort, tmp_path_factory):
    """A quick late-fusion comparison checkpoint, trained once through the command line; and its seconds."""
    out = tmp_path_factory.mktemp("comparison") / "late_fusion"
    t0 = time.perf_counter()
    rc = main(["train", "--method", "late_fusion", "--quick", "--data", str(small_cohort), "--out", str(out),
               "--device", "cpu"])
    assert rc == 0
    return out, time.perf_counter() - t0


def test_train_method_writes_a_comparison_checkpoint(late_fusion):
    out, seconds = late_fusion
    meta = read_meta(out)  # its checksum still holds after the method was recorded
    assert meta["method"] == "late_fusion"
    assert meta["config"]["model"]["fusion"] == "late" and meta["config"]["diffusion"]["enabled"] is False
    assert meta["config"]["training"]["p_max"] == 0.0  # the baseline's own training, not RobustMDiff's
    assert meta["test_metrics"]["natural"]["auroc"] > 0.5
    print(f"quick late_fusion training: {seconds:.0f} s")


def test_train_refuses_an_unknown_method(tmp_path, capsys):
    assert main(["train", "--method", "late-fusion", "--quick", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'late-fusion'" in err and "late_fusion" in err and "dropout_0.5" in err
    assert not (tmp_path / "x").exists()


# ---- which models the study has ---------------------------------------------------------------------------
def test_the_study_finds_its_models_and_names_what_is_missing(late_fusion, tmp_path, monkeypatch):
    out, _ = late_fusion
    broken = tmp_path / "dropout_0.5"
    broken.mkdir()
    (broken / "meta.json").write_text("{}")
    monkeypatch.setenv("RMD_REVIEW_MODELS", f"{DEFAULT_CHECKPOINT},{out},{broken}")
    found = review_models()
    assert found.names == ["robustmdiff", "late_fusion"]
    assert [m.label for m in found.models] == ["RobustMDiff", "Late fusion"]
    assert found.missing == ["dropout_0.5"] and [p for p, _ in found.skipped] == [str(broken)]
    assert train_command("dropout_0.5") == "python -m core train --method dropout_0.5 --out checkpoints/comparison/dropout_0.5"
    monkeypatch.setenv("RMD_REVIEW_MODELS", str(DEFAULT_CHECKPOINT))  # the shipped model alone
    alone = review_models()
    assert alone.names == ["robustmdiff"] and alone.missing == ["dropout_0.5", "late_fusion"]


# ---- the store: schema 2 and the migration ----------------------------------------------------------------
def _schema_1_database(path) -> None:
    """A database as schema version 1 left it: ratings keyed (reviewer, case_id, method), a reviewer with a PIN."""
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE ratings (reviewer TEXT NOT NULL, case_id TEXT NOT NULL, method TEXT NOT NULL,
            relevance INTEGER NOT NULL CHECK (relevance BETWEEN 1 AND 5),
            usefulness INTEGER NOT NULL CHECK (usefulness BETWEEN 1 AND 5),
            trust INTEGER NOT NULL CHECK (trust BETWEEN 1 AND 5), comment TEXT NOT NULL DEFAULT '',
            saved_at TEXT NOT NULL, PRIMARY KEY (reviewer, case_id, method));
        CREATE TABLE reviewers (name TEXT PRIMARY KEY COLLATE NOCASE, pin_hash TEXT NOT NULL, created_at TEXT NOT NULL,
            failures INTEGER NOT NULL DEFAULT 0, locked_until TEXT, generation INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        PRAGMA user_version = 1;""")
    db.executemany("INSERT INTO ratings VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [
        ("alice", "c1", "shap", 4, 3, 5, "kept", "2026-11-20T10:00:00Z"),
        ("alice", "c2", "integrated_gradients", 2, 2, 1, "", "2026-11-20T10:05:00Z"),
        ("bob", "c1", "shap", 5, 5, 5, "=1+1", "2026-11-21T09:00:00Z")])
    db.execute("INSERT INTO reviewers (name, pin_hash, created_at) VALUES (?, ?, ?)",
               ("alice", auth.hash_pin("1234"), "2026-11-20T09:59:00Z"))
    db.execute("INSERT INTO settings VALUES ('token_secret', ?)", ("ab" * 32,))
    db.commit()
    db.close()


def test_an_old_database_keeps_its_ratings_under_robustmdiff(tmp_path, monkeypatch):
    monkeypatch.setenv("RMD_REVIEWER_CODE", "demo")
    path = tmp_path / "v1.sqlite3"
    _schema_1_database(path)
    before = sqlite3.connect(path).execute("SELECT * FROM ratings ORDER BY saved_at").fetchall()
    store = ReviewStore(path)
    rows = store.all_ratings()
    assert [(r["reviewer"], r["case_id"], r["model"], r["method"], r["relevance"], r["usefulness"], r["trust"],
             r["comment"], r["saved_at"]) for r in rows] == [(*b[:2], "robustmdiff", *b[2:]) for b in before]
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    pk = [r[1] for r in sorted(db.execute("PRAGMA table_info(ratings)"), key=lambda r: r[5]) if r[5]]
    assert pk == ["reviewer", "case_id", "model", "method"]
    assert {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} == \
        {"ratings", "reviewers", "settings", "sessions", "attempts"}  # the old table is gone
    assert store.rated("alice") == {Item("c1", "shap"), Item("c2", "integrated_gradients")}
    assert store.rating("alice", Item("c1", "shap", "robustmdiff"))["comment"] == "kept"
    # the same reviewer, case and method under another model is a new rating, not an overwrite
    store.save("alice", Item("c1", "shap", "late_fusion"), 1, 1, 1, "other model")
    assert store.rating("alice", Item("c1", "shap"))["relevance"] == 4
    assert store.rating("alice", Item("c1", "shap", "late_fusion"))["comment"] == "other model"
    assert len(ReviewStore(path).all_ratings()) == 4  # reopening migrates nothing twice
    assert auth.sign_in(store, "alice", "demo", "1234").reviewer == "alice"  # reviewers and PINs kept
    assert store.secret() != bytes.fromhex("ab" * 32)  # the secret the database kept is dropped (issue 27)


# ---- the queue: every (case, model, method) once, in each reviewer's own order ------------------------------
def test_queue_has_every_case_model_method_once_in_a_per_reviewer_order():
    cases, models = [f"RMD-{i:05d}" for i in range(14)], ["robustmdiff", "dropout_0.5", "late_fusion"]
    alice = ReviewStore.queue("alice", cases, list(METHODS), models)
    bob = ReviewStore.queue("bob", cases, list(METHODS), models)
    every = {Item(c, m, model) for c in cases for model in models for m in METHODS}
    for q in (alice, bob):
        assert len(q) == len(every) == 14 * 3 * len(METHODS) and set(q) == every
    assert alice != bob
    assert ReviewStore.queue(" Alice ", cases, list(METHODS), models) == alice  # stable when she comes back
    # models are mixed through the queue, not one block after another
    first = [i.model for i in alice[: len(alice) // 3]]
    assert len(set(first)) == 3
    # with RobustMDiff alone, a reviewer keeps the order they had before the model factor
    old = [Item(c, m) for c in cases for m in METHODS]
    random.Random(int(hashlib.sha256(b"alice").hexdigest()[:16], 16)).shuffle(old)
    assert ReviewStore.queue("alice", cases, list(METHODS)) == old


# ---- the paired test ----------------------------------------------------------------------------------------
def _synthetic(shift: dict[str, float], reviewers: int = 4, cases: int = 12, seed: int = 0) -> list[dict]:
    """Ratings of every reviewer × case × method × model: a shared item quality plus noise plus a model shift."""
    rng = random.Random(seed)
    out = []
    for r in range(reviewers):
        for c in range(cases):
            for method in ("shap", "integrated_gradients"):
                quality = rng.uniform(2, 4)
                for model, s in shift.items():
                    scores = {k: min(5, max(1, round(quality + s + rng.gauss(0, 0.7)))) for k in SCALES}
                    out.append({"reviewer": f"r{r}", "case_id": f"c{c}", "model": model, "method": method, **scores})
    return out


def test_paired_test_finds_the_better_model_and_not_a_difference_that_is_not_there():
    ratings = _synthetic({"robustmdiff": 1.2, "late_fusion": 0.0, "dropout_0.5": 1.2})
    t = paired_tests(ratings).set_index(["scale", "comparison"])
    for scale in SCALES:
        better = t.loc[(scale, "late_fusion")]
        assert better.n_pairs == 4 * 12 * 2 and better.n_cases == 12 and better.mean_diff > 0.8
        assert better.verdict == "robustmdiff higher" and better.p_corrected < 0.01 and better.ci_low > 0
        same = t.loc[(scale, "dropout_0.5")]
        assert same.n_pairs == 96 and abs(same.mean_diff) < 0.3 and same.p > 0.1
        assert same.verdict == "no clear difference" and same.ci_low < 0 < same.ci_high
        assert same.p_corrected == min(1.0, 2 * same.p)  # Bonferroni over the two comparison models
        assert better.confidence == same.confidence == 0.975  # and the interval at the matching level
    # the other way round: the comparison model rated higher reads as such
    worse = paired_tests(_synthetic({"robustmdiff": 0.0, "late_fusion": 1.5}, seed=1)).iloc[0]
    assert worse.verdict == "late_fusion higher" and worse.mean_diff < 0 and worse.ci_high < 0
    assert 0 < worse.p < 0.01 and worse.confidence == 0.95  # one comparison model: no widening; p never 0


def test_one_verdict_rule_the_corrected_interval_and_the_corrected_p_never_disagree():
    """Issue 29: "+2.09 [+0.53, +3.73] … no clear difference" — an unadjusted interval beside a verdict
    from a corrected p. Here, on many small noisy studies near the threshold, every row's verdict, its
    interval and its corrected p say the same thing."""
    for seed in range(20):
        rng = random.Random(seed)
        shift = {"robustmdiff": rng.uniform(0, 0.8), "late_fusion": 0.0, "dropout_0.5": rng.uniform(0, 0.8)}
        t = paired_tests(_synthetic(shift, reviewers=2, cases=rng.randint(3, 6), seed=seed))
        for row in t.itertuples():
            excludes = row.ci_low > 0 or row.ci_high < 0
            assert excludes == (row.p_corrected < 0.05), row
            assert (row.verdict != "no clear difference") == excludes, row
            assert row.ci_low <= row.mean_diff <= row.ci_high and -4 <= row.ci_low and row.ci_high <= 4


def test_intervals_stay_on_the_scale_and_too_few_ratings_get_none():
    from core.review.stats import MIN_RATINGS, TOO_FEW

    # the case: two ratings far apart gave "from −15.56 to 22.56" on a 1–5 scale
    two = [{"reviewer": f"r{i}", "case_id": f"c{i}", "model": "robustmdiff", "method": "shap", "relevance": v,
            "usefulness": v, "trust": v} for i, v in enumerate((1, 5))]
    row = per_model(two).iloc[0]
    assert row["mean"] == 3 and row.n == 2 and row.ci_low != row.ci_low and row.range == TOO_FEW
    # enough ratings, but all of one case: still no interval (resampling one case says nothing)
    one_case = [{**two[0], "reviewer": f"r{i}", "relevance": 1 + i % 5} for i in range(MIN_RATINGS + 3)]
    assert per_model(one_case).iloc[0].range == TOO_FEW
    # enough: every interval inside 1–5, around its mean, and reproducible
    for seed in range(20):
        ratings = _synthetic({"robustmdiff": random.Random(seed).uniform(-2, 2)}, reviewers=1, cases=3, seed=seed)
        m = per_model(ratings)
        assert (m.n == 6).all() and (m.n_cases == 3).all()
        assert (1 <= m.ci_low).all() and (m.ci_low <= m["mean"]).all() and (m["mean"] <= m.ci_high).all()
        assert (m.ci_high <= 5).all() and m.range.str.match(r"^\d\.\d\d to \d\.\d\d$").all()
        assert m.equals(per_model(ratings))


def test_pairs_need_the_same_reviewer_case_and_method():
    ratings = [{"reviewer": "a", "case_id": "c1", "model": "robustmdiff", "method": "shap", "relevance": 5,
                "usefulness": 5, "trust": 5},
               {"reviewer": "b", "case_id": "c1", "model": "late_fusion", "method": "shap", "relevance": 1,
                "usefulness": 1, "trust": 1},  # another reviewer
               {"reviewer": "a", "case_id": "c1", "model": "late_fusion", "method": "random", "relevance": 1,
                "usefulness": 1, "trust": 1}]  # another method
    t = paired_tests(ratings)
    assert list(t.n_pairs) == [0, 0, 0] and set(t.verdict) == {"no pairs"}
    assert paired_tests([r for r in ratings if r["model"] == "robustmdiff"]).empty  # one model: nothing to test


def test_summaries_per_model_and_method_and_a_formula_safe_export():
    ratings = _synthetic({"robustmdiff": 1.0, "=HYPERLINK(\"x\")": 0.0}, reviewers=2, cases=3)
    m = per_model(ratings)
    assert set(m.model) == {"robustmdiff", "=HYPERLINK(\"x\")"} and (m.n == 12).all()
    assert (m.ci_low <= m["mean"]).all() and (m["mean"] <= m.ci_high).all()
    mm = per_model_method(ratings)
    assert len(mm) == 2 * 2 * 3 and (mm.n == 6).all()
    text = results_csv({"per_model": m, "per_model_method": mm, "paired_test": paired_tests(ratings)})
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {r["table"] for r in rows} == {"per_model", "per_model_method", "paired_test"}
    assert {r["model"] for r in rows if r["table"] == "per_model"} == {"robustmdiff", "'=HYPERLINK(\"x\")"}
    assert {r["comparison"] for r in rows if r["table"] == "paired_test"} == {"'=HYPERLINK(\"x\")"}
    assert all(r["n"] == "12" for r in rows if r["table"] == "per_model")  # counts stay integers


# ---- the page: two models, blinded ---------------------------------------------------------------------------
@pytest.fixture
def two_model_page(monkeypatch, tmp_path, default_cohort, late_fusion):
    monkeypatch.setenv("RMD_REVIEWER_CODE", "demo")
    monkeypatch.delenv("RMD_ADMIN_CODE", raising=False)
    monkeypatch.setenv("RMD_REVIEW_DB", str(tmp_path / "review.sqlite3"))
    monkeypatch.setenv("RMD_REVIEW_WARM", "0")  # items are prepared on demand
    monkeypatch.setenv("RMD_REVIEW_MODELS", f"{DEFAULT_CHECKPOINT},{late_fusion[0]}")
    st.cache_resource.clear()
    st.cache_data.clear()
    return lambda: AppTest.from_file(PAGE, default_timeout=600)


def _ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def _texts(node) -> list[str]:
    """Everything an element tree carries to the browser: each element's protobuf (text, captions, HTML,
    chart specs, widget ids and labels)."""
    out = []
    proto = getattr(node, "proto", None)
    if proto is not None:
        out.append(str(proto))
    for child in getattr(node, "children", {}).values():
        out += _texts(child)
    return out


def _leaks(at: AppTest) -> list[str]:
    found = []
    for text in _texts(at._tree):
        found += [m.group(0) for m in HIDDEN.finditer(text)]
    return found


def _sign_in(at: AppTest) -> AppTest:
    at.text_input(key="reviewer_name").input("alice")
    at.text_input(key="reviewer_code").input("demo")
    at.text_input(key="reviewer_pin").input("1234")
    at.text_input(key="reviewer_pin_again").input("1234")
    return _ok(next(b for b in at.button if b.label == "Sign in").click().run())


def _model_numbers(at: AppTest, case_id: str) -> list[str]:
    """Numbers in the item's words (markdown, captions) other than its case id: a probability, a
    confidence, a time would tell a reviewer which model this is (issue 29: "(54 %)" matched the
    explorer's 53.7 % for RobustMDiff)."""
    words = [e.value for e in (*at.markdown, *at.caption)]
    item = [w for w in words if f"Case {case_id}" in w]
    assert len(item) == 1, words
    return re.findall(r"\d+(?:[.,]\d+)?", item[0].replace(case_id, "")) + [w for w in words if "%" in w]


def test_the_page_queues_both_models_and_never_names_model_or_method(two_model_page, tmp_path, default_dataset):
    from core.demo import study_cases

    at = _ok(two_model_page().run())
    assert not _leaks(at), _leaks(at)
    at = _sign_in(at)
    cases = [d.case_id for d in study_cases(default_dataset)]
    queue = ReviewStore.queue("alice", cases, list(METHODS), ["robustmdiff", "late_fusion"])
    assert f"alice: 0 of {len(queue)} rated" in at.get("progress")[0].proto.text
    assert len(queue) == len(cases) * len(METHODS) * 2
    # one quick item of each model (explanations are computed on demand)
    shown = [next(i for i, item in enumerate(queue) if item.model == model and item.method in CHEAP)
             for model in ("robustmdiff", "late_fusion")]
    for pos in shown:
        at.number_input(key="pos_0").set_value(pos + 1)
        _ok(at.run())
        assert any(f"Case {queue[pos].case_id}" in m.value for m in at.markdown)
        assert any("Model and explanation method: hidden" in m.value for m in at.markdown)
        assert not _leaks(at), (queue[pos], _leaks(at))
        assert not _model_numbers(at, queue[pos].case_id), _model_numbers(at, queue[pos].case_id)
    # the rating is stored under the item's model and method, which the page never showed
    pos = shown[-1]  # shown now: late fusion's item
    for s, v in zip(SCALES, (2, 3, 4)):
        at.radio(key=f"{s}_{pos}").set_value(v)
    _ok(at.run())
    _ok(next(b for b in at.button if b.label == "Save rating").click().run())
    rows = ReviewStore(tmp_path / "review.sqlite3").all_ratings()
    assert [(r["case_id"], r["model"], r["method"], r["trust"]) for r in rows] == \
        [(queue[pos].case_id, "late_fusion", queue[pos].method, 4)]
    assert not _leaks(at), _leaks(at)


def test_results_show_models_methods_the_paired_test_and_what_is_missing(two_model_page, monkeypatch, tmp_path):
    binary = tmp_path / "binary"  # a real checkpoint of other classes: the shipped one, its meta rewritten
    shutil.copytree(DEFAULT_CHECKPOINT, binary)
    meta = read_meta(binary)
    write_meta(binary, {**meta, "method": "early_fusion", "data_info": {**meta["data_info"], "classes": ["0", "1"]}})
    monkeypatch.setenv("RMD_REVIEW_MODELS", f"{os.environ['RMD_REVIEW_MODELS']},{binary}")  # of other classes
    store = ReviewStore(tmp_path / "review.sqlite3")
    for r in _synthetic({"robustmdiff": 1.2, "late_fusion": 0.0}, reviewers=3, cases=6):
        store.save(r["reviewer"], Item(r["case_id"], r["method"], r["model"]),
                   *(r[s] for s in SCALES), comment="")
    monkeypatch.setenv("RMD_ADMIN_CODE", "boss")
    at = _ok(two_model_page().run())
    assert not _leaks(at), _leaks(at)  # the Results tab, before the admin code, names nothing either
    at.text_input(key="admin_code").input("boss")
    _ok(next(b for b in at.button if b.label == "Open results").click().run())
    frames = [d.value for d in at.dataframe]  # models, per model, per method, per model and method, paired test
    assert len(frames) == 5
    models = frames[0]
    assert list(models.model) == ["robustmdiff", "late_fusion"]
    assert any("dropout_0.5" in w.value for w in at.warning)
    # the model of other classes is left out, and the admin reads why
    assert any("Not used: binary: its classes (0, 1) are not the study's" in w.value for w in at.warning)
    assert any(train_command("dropout_0.5") in c.value for c in at.code)
    assert set(frames[1].model) == {"robustmdiff", "late_fusion"} and len(frames[1]) == 2 * 3
    assert set(frames[2].method) == {"shap", "integrated_gradients"}
    assert len(frames[3]) == 2 * 2 * 3
    paired = frames[4]
    assert list(paired.comparison) == ["late_fusion"] * 3 and set(paired.verdict) == {"robustmdiff higher"}
    assert (paired.p_corrected < 0.01).all() and (paired.ci_low > 0).all()
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["Export ratings (CSV)", "Export results (CSV)"]
