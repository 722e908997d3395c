"""The review study: PIN-bound reviewers, sign-in tokens that survive a reload, the study-admin gate,
ISO timestamps (with old epoch databases still loading), formula-safe export, explanations prepared once,
and the page through AppTest. Every test uses a real SQLite file in tmp_path."""

from __future__ import annotations

import csv
import io
import re
import sqlite3
import threading
import time

import pytest
import streamlit as st
import torch
from hypothesis import given, settings
from hypothesis import strategies as hst
from streamlit.testing.v1 import AppTest

from core.errors import RobustMDiffError
from core.paths import ROOT
from core.review import auth
from core.review.export import ratings_csv, safe_cell
from core.review.prepared import PreparedExplanations
from core.review.store import SCHEMA_VERSION, Item, ReviewStore

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
PAGE = str(ROOT / "pages" / "review.py")
TOKEN = "reviewer_token"
SCALES = ("relevance", "usefulness", "trust")


@pytest.fixture
def codes(monkeypatch):
    monkeypatch.setenv("RMD_REVIEWER_CODE", "demo")
    monkeypatch.delenv("RMD_ADMIN_CODE", raising=False)


@pytest.fixture
def store(tmp_path, codes) -> ReviewStore:
    return ReviewStore(tmp_path / "review.sqlite3")


# ---- PINs: a name cannot be taken over -------------------------------------------------------------------
def test_first_sign_in_sets_the_pin_and_a_wrong_pin_is_refused(store):
    assert auth.sign_in(store, " alice ", "demo", "1234", "1234").reviewer == "alice"
    store.save("alice", Item("c1", "shap"), 4, 4, 4, "mine")
    before = store.all_ratings()
    with pytest.raises(RobustMDiffError, match="cannot be registered with this PIN"):
        auth.sign_in(store, "alice", "demo", "9999", "9999")
    with pytest.raises(RobustMDiffError, match="wrong PIN"):
        auth.sign_in(store, "ALICE", "demo", "9999")  # the name is matched without case
    assert store.all_ratings() == before
    assert auth.sign_in(store, "Alice", "demo", "1234").reviewer == "alice"  # her ratings stay under one name


def test_pin_is_stored_salted_and_hashed(store):
    auth.sign_in(store, "alice", "demo", "zebra-pin", "zebra-pin")
    auth.sign_in(store, "bob", "demo", "zebra-pin", "zebra-pin")
    a, b = store.reviewer("alice").pin_hash, store.reviewer("bob").pin_hash
    assert a.startswith("scrypt$") and "zebra" not in a and a != b  # different salts
    files = [p for p in store.path.parent.iterdir() if p.name.startswith(store.path.name)]  # with -wal, if any
    assert not any(b"zebra" in p.read_bytes() for p in files)


def test_a_new_name_needs_the_pin_twice_and_a_real_pin(store):
    with pytest.raises(RobustMDiffError, match="two PINs differ"):
        auth.sign_in(store, "carol", "demo", "1234", "1243")
    with pytest.raises(RobustMDiffError, match="4 to 128"):
        auth.sign_in(store, "carol", "demo", "12", "12")
    with pytest.raises(RobustMDiffError, match="wrong reviewer code"):
        auth.sign_in(store, "carol", "guess", "1234", "1234")
    assert store.reviewer("carol") is None


def test_repeated_wrong_pins_pause_the_name(store):
    auth.sign_in(store, "alice", "demo", "1234", "1234")
    for _ in range(5):
        with pytest.raises(RobustMDiffError, match="wrong PIN"):
            auth.sign_in(store, "alice", "demo", "0000")
    with pytest.raises(RobustMDiffError, match="paused"):
        auth.sign_in(store, "alice", "demo", "1234")  # even the right PIN waits: no guessing on


def test_the_store_refuses_an_unanswered_question(store):
    with pytest.raises(RobustMDiffError, match="answer every question"):
        store.save("alice", Item("c1", "shap"), 4, None, 5)  # what a forged Save click would send
    with pytest.raises(RobustMDiffError, match="answer every question"):
        store.save("alice", Item("c1", "shap"), 4, True, 5)
    assert store.all_ratings() == []


def test_the_admin_can_reset_a_forgotten_pin(store):
    session = auth.sign_in(store, "alice", "demo", "1234", "1234")
    store.save("alice", Item("c1", "shap"), 4, 4, 4)
    token = store.reload_token(session.id)
    store.reset_pin("alice")
    assert store.session(session.id) is None and store.exchange_reload(token) is None  # the old sign-in ends
    with pytest.raises(RobustMDiffError, match="Unknown name or wrong PIN"):
        auth.sign_in(store, "Alice", "demo", "5678")
    assert auth.sign_in(store, "Alice", "demo", "5678", "5678").reviewer == "alice"
    with pytest.raises(RobustMDiffError, match="wrong PIN"):
        auth.sign_in(store, "alice", "demo", "1234")
    assert store.rated("alice") == {Item("c1", "shap")} and store.reviewer_names() == ["alice"]


# ---- tokens: a reload keeps the reviewer signed in ---------------------------------------------------------
def test_reload_token_round_trip_and_what_invalidates_it(store, monkeypatch):
    session = auth.sign_in(store, "alice", "demo", "1234", "1234")
    token = store.reload_token(session.id)
    assert "1234" not in token and "demo" not in token and session.id not in token
    assert store.exchange_reload(token[:-2] + ("AA" if token[-2:] != "AA" else "BB")) is None
    reloaded = store.exchange_reload(token)
    assert reloaded.reviewer == "alice" and reloaded.id != session.id
    assert store.exchange_reload(token) is None  # one reload only
    monkeypatch.setenv("RMD_REVIEWER_CODE", "new-code")
    assert store.session(reloaded.id) is None  # changing the study code ends every sign-in
    monkeypatch.setenv("RMD_REVIEWER_CODE", "demo")
    token = store.reload_token(reloaded.id)
    auth.sign_out(store, session.id)
    assert store.exchange_reload(token) is None and store.session(reloaded.id) is None


def test_hostile_names_sign_in_and_keep_their_token(store):
    for name in ("Robert'); DROP TABLE reviewers;--", "a.b.c", "名前 ✓", "=cmd|' /C calc'!A0"):
        session = auth.sign_in(store, name, "demo", "pin-1", "pin-1")
        assert session.reviewer == name
        assert store.exchange_reload(store.reload_token(session.id)).reviewer == name
    assert len(store.reviewer_names()) == 4


def test_token_secret_is_per_database_not_the_reviewer_code(tmp_path, codes):
    one, two = ReviewStore(tmp_path / "a.sqlite3"), ReviewStore(tmp_path / "b.sqlite3")
    session = [auth.sign_in(s, "alice", "demo", "1234", "1234") for s in (one, two)][0]
    assert one.secret() != two.secret() and len(one.secret()) == 32
    assert two.exchange_reload(one.reload_token(session.id)) is None
    assert ReviewStore(one.path).secret() == one.secret()  # kept across restarts


@pytest.fixture(scope="module")
def fuzz_store(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RMD_REVIEWER_CODE", "demo")
        store = ReviewStore(tmp_path_factory.mktemp("fuzz") / "r.sqlite3")
        auth.sign_in(store, "alice", "demo", "1234", "1234")
        yield store


@settings(max_examples=200, deadline=None)
@given(hst.text(max_size=300) | hst.from_regex(r"[A-Za-z0-9_-]{0,12}\.[0-9-]{0,3}\.[0-9]{0,12}\.[A-Za-z0-9_-]{0,50}"))
def test_any_string_as_a_token_signs_nobody_in(fuzz_store, text):
    assert fuzz_store.exchange_reload(text) is None


# ---- admin gate -------------------------------------------------------------------------------------------
def test_admin_code_is_separate_from_the_reviewer_code(monkeypatch, codes):
    with pytest.raises(RobustMDiffError, match="switched off.*RMD_ADMIN_CODE"):
        auth.check_admin_code("demo")
    monkeypatch.setenv("RMD_ADMIN_CODE", "demo")
    with pytest.raises(RobustMDiffError, match="must differ"):
        auth.check_admin_code("demo")
    monkeypatch.setenv("RMD_ADMIN_CODE", "boss")
    with pytest.raises(RobustMDiffError, match="wrong study-admin code"):
        auth.check_admin_code("demo")
    auth.check_admin_code("boss")


# ---- timestamps and export ----------------------------------------------------------------------------------
def test_timestamps_are_iso_strings(store):
    store.save("alice", Item("c1", "shap"), 1, 2, 3)
    row = store.all_ratings()[0]
    assert ISO.match(row["saved_at"]), row["saved_at"]
    raw = sqlite3.connect(store.path).execute("SELECT typeof(saved_at), saved_at FROM ratings").fetchone()
    assert raw[0] == "text" and ISO.match(raw[1])
    auth.sign_in(store, "alice", "demo", "1234", "1234")
    created = sqlite3.connect(store.path).execute("SELECT created_at FROM reviewers").fetchone()[0]
    assert ISO.match(created)


def test_an_old_database_with_epoch_times_still_loads(tmp_path, codes):
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript("""CREATE TABLE ratings (reviewer TEXT NOT NULL, case_id TEXT NOT NULL, method TEXT NOT NULL,
        relevance INTEGER NOT NULL, usefulness INTEGER NOT NULL, trust INTEGER NOT NULL,
        comment TEXT NOT NULL DEFAULT '', saved_at REAL NOT NULL, PRIMARY KEY (reviewer, case_id, method));""")
    db.execute("INSERT INTO ratings VALUES ('alice', 'c1', 'shap', 4, 4, 5, 'old', 1795677600.25)")
    db.commit()
    db.close()
    store = ReviewStore(path)
    assert store.all_ratings()[0]["saved_at"] == "2026-11-26T07:20:00Z"
    assert "2026-11-26T07:20:00Z" in ratings_csv(store.all_ratings())
    store.save("alice", Item("c2", "shap"), 1, 1, 1)  # and it keeps working, in order
    assert [r["case_id"] for r in store.all_ratings()] == ["c1", "c2"]
    auth.sign_in(store, "alice", "demo", "1234", "1234")  # a name from before PINs claims it on first sign-in
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert {r["model"] for r in store.all_ratings()} == {"robustmdiff"}


def test_export_is_formula_safe(store):
    store.save("+alice", Item("c1", "shap"), 1, 2, 3, '=HYPERLINK("http://evil.example","click")')
    store.save("bob", Item("c1", "shap"), 3, 3, 3, "-2+3\nline two, with comma")
    store.save("carol", Item("c1", "shap"), 3, 3, 3, "@SUM(A1)")
    rows = list(csv.DictReader(io.StringIO(ratings_csv(store.all_ratings()))))
    by = {r["reviewer"]: r for r in rows}
    assert set(by) == {"'+alice", "bob", "carol"}
    assert by["'+alice"]["comment"] == "'=HYPERLINK(\"http://evil.example\",\"click\")"
    assert by["bob"]["comment"] == "'-2+3\nline two, with comma"
    assert by["carol"]["comment"] == "'@SUM(A1)"
    assert all(ISO.match(r["saved_at"]) for r in rows) and by["bob"]["trust"] == "3"
    assert [safe_cell(v) for v in ("\tx", "\rx", "a=b", 5)] == ["'\tx", "'\rx", "a=b", 5]


# ---- explanations prepared once -----------------------------------------------------------------------------
def test_prepared_explanations_are_computed_once_and_kept_on_disk(tmp_path):
    calls: list[tuple[int, str]] = []
    lock = threading.Lock()

    def compute(row: int, model: str, method: str) -> dict:
        with lock:
            calls.append((row, model, method))
        time.sleep(0.05)
        return {"row": row, "model": model, "method": method}

    threads = torch.get_num_threads()
    folders = {"robustmdiff": tmp_path / "prep-a", "late_fusion": tmp_path / "prep-b"}  # one per model fingerprint
    prep = PreparedExplanations(folders, compute)
    keys = [(r, f"case{r}", model, m) for r in range(3) for model in folders for m in ("shap", "random")]
    prep.prefetch(keys[:2])
    prep.warm(keys)
    results = [prep.get(k) for k in keys]  # the page and the worker race for the same items
    assert results == [{"row": r, "model": model, "method": m} for r, _, model, m in keys]
    prep.close()
    assert sorted(calls) == sorted({(r, model, m) for r, _, model, m in keys})  # each exactly once
    assert torch.get_num_threads() == threads  # the worker's one-thread policy stays in the worker
    assert all(len(list(f.glob("*.npz"))) == 6 for f in folders.values())  # each model in its own folder (no pickle)
    again = PreparedExplanations(folders, compute)  # a new process: read from disk
    assert again.ready(keys[0]) and again.get(keys[0]) == {"row": 0, "model": "robustmdiff", "method": "shap"}
    assert again.get(keys[-1]) == {"row": 2, "model": "late_fusion", "method": "random"}
    assert len(calls) == len(keys)


class InlinePool:
    """The app's model pool as prepared explanations see it (core/serve.py), running each job at once in the
    caller's thread and noting (its result, its priority)."""

    def __init__(self):
        self.ran: list[tuple[object, int]] = []

    def submit(self, fn, *args, priority: int, **_):
        from core.pool_job import Job

        job = Job("review", priority)
        job.future.set_result(fn(*args))
        self.ran.append((job.result(), priority))
        return job

    def promote(self, job, priority: int) -> None:
        pass  # every job here is done before anyone could wait for it


def test_prepared_work_runs_where_it_is_told_background_behind_pages(tmp_path):
    """In the app, review explanations run in the shared model pool: what the background thread prepares
    goes in with its urgency (ahead of need, or the whole study some day), what a page waits for as urgent."""
    from core.serve import AHEAD as SOON, INTERACTIVE

    pool = InlinePool()
    prep = PreparedExplanations({"robustmdiff": tmp_path / "prep"}, lambda row, model, method: row, pool=pool)
    assert prep.get((0, "c0", "robustmdiff", "shap")) == 0
    prep.prefetch([(1, "c1", "robustmdiff", "shap")])
    deadline = time.time() + 30
    while not prep.ready((1, "c1", "robustmdiff", "shap")) and time.time() < deadline:
        time.sleep(0.01)
    assert prep.get((1, "c1", "robustmdiff", "shap")) == 1
    prep.close()
    assert pool.ran == [(0, INTERACTIVE), (1, SOON)]


def test_the_preparing_thread_ends_when_nothing_is_left_and_close_drops_the_queue(tmp_path):
    """Issue 29: the idle server stayed busy after the review page was opened, and stopping it waited 30 s.
    The thread lives only while its queue has work; close() drops what is queued and does not wait for it."""
    started, release = threading.Event(), threading.Event()
    computed: list[int] = []

    def compute(row: int, model: str, method: str) -> int:
        started.set()
        release.wait(30)
        computed.append(row)
        return row

    prep = PreparedExplanations({"robustmdiff": tmp_path / "prep"}, compute, pool=InlinePool())
    keys = [(r, f"c{r}", "robustmdiff", "shap") for r in range(50)]
    prep.prefetch(keys[:1])
    worker = prep._worker
    assert started.wait(30) and prep.busy() and worker is not None
    release.set()
    assert prep.get(keys[0]) == 0
    worker.join(30)  # the queue is empty: the thread ends by itself
    assert not worker.is_alive() and not prep.busy()
    prep.prefetch(keys[:1])  # already prepared: no thread is started for nothing
    assert not prep.busy()
    # a long queue, one item in hand: close returns without working through the rest
    started.clear()
    release.clear()
    prep.prefetch(keys[1:])
    assert started.wait(30)
    prep.close()
    assert computed == [0]  # close returned while the item in hand was still blocked: it did not wait for it
    release.set()
    deadline = time.time() + 30
    while prep.busy() and time.time() < deadline:
        time.sleep(0.01)
    assert not prep.busy() and computed == [0, 1]  # the item in hand finished, nothing after it started
    prep.prefetch(keys[2:3])  # closed: nothing new starts
    assert not prep.busy() and computed == [0, 1]


def test_a_failed_preparation_is_retried(tmp_path):
    attempts = []

    def compute(row: int, model: str, method: str) -> str:
        attempts.append(row)
        if len(attempts) == 1:
            raise RuntimeError("transient")
        return "ok"

    prep = PreparedExplanations({"robustmdiff": tmp_path / "prep"}, compute)
    with pytest.raises(RuntimeError):
        prep.get((0, "c0", "robustmdiff", "shap"))
    assert prep.get((0, "c0", "robustmdiff", "shap")) == "ok"


# ---- the page ---------------------------------------------------------------------------------------------
@pytest.fixture
def page(monkeypatch, tmp_path, default_cohort, codes):
    monkeypatch.setenv("RMD_REVIEW_DB", str(tmp_path / "review.sqlite3"))
    monkeypatch.setenv("RMD_REVIEW_MODELS", str(ROOT / "checkpoints" / "default"))  # the shipped model alone
    monkeypatch.setenv("RMD_REVIEW_WARM", "0")  # no background work in tests: items are prepared on demand
    st.cache_resource.clear()
    st.cache_data.clear()

    def new() -> AppTest:
        return AppTest.from_file(PAGE, default_timeout=600)

    return new


def _ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def _sign_in(at: AppTest, name: str = "alice", pin: str = "1234", again: str | None = "1234") -> AppTest:
    at.text_input(key="reviewer_name").input(name)
    at.text_input(key="reviewer_code").input("demo")
    at.text_input(key="reviewer_pin").input(pin)
    if again is not None:
        at.text_input(key="reviewer_pin_again").input(again)
    return _ok(next(b for b in at.button if b.label == "Sign in").click().run())


def _save_button(at: AppTest):
    return next(b for b in at.button if b.label == "Save rating")


def _rate(at: AppTest, pos: int, values=(5, 3, 2), comment: str = "") -> AppTest:
    for s, v in zip(SCALES, values):
        at.radio(key=f"{s}_{pos}").set_value(v)
    if comment:
        at.text_area(key=f"comment_{pos}").input(comment)
    _ok(at.run())
    return _ok(_save_button(at).click().run())


def test_questions_start_unanswered_and_save_waits_for_all(page, tmp_path):
    at = _sign_in(_ok(page().run()))
    assert [at.radio(key=f"{s}_0").value for s in SCALES] == [None, None, None]
    assert _save_button(at).disabled
    at.radio(key="relevance_0").set_value(4)
    at.radio(key="usefulness_0").set_value(2)
    _ok(at.run())
    assert _save_button(at).disabled
    assert ReviewStore(tmp_path / "review.sqlite3").all_ratings() == []
    at.radio(key="trust_0").set_value(5)
    _ok(at.run())
    assert not _save_button(at).disabled
    _ok(_save_button(at).click().run())
    rows = ReviewStore(tmp_path / "review.sqlite3").all_ratings()
    assert [(r["relevance"], r["usefulness"], r["trust"]) for r in rows] == [(4, 2, 5)]
    assert ISO.match(rows[0]["saved_at"])
    assert [at.radio(key=f"{s}_1").value for s in SCALES] == [None, None, None]  # the next item starts blank


def test_wrong_pin_is_refused_and_ratings_are_untouched(page, tmp_path):
    _rate(_sign_in(_ok(page().run())), 0, comment="mine")
    before = ReviewStore(tmp_path / "review.sqlite3").all_ratings()
    intruder = _sign_in(_ok(page().run()), "alice", "9999", "9999")
    assert any("cannot be registered with this PIN" in e.value for e in intruder.error)
    assert "reviewer" not in intruder.session_state and TOKEN not in intruder.query_params
    assert not any(b.label == "Save rating" for b in intruder.button)
    assert ReviewStore(tmp_path / "review.sqlite3").all_ratings() == before


def test_sign_in_survives_a_reload(page, tmp_path):
    at = _sign_in(_ok(page().run()))
    _rate(at, 0)
    token = at.query_params[TOKEN]
    reloaded = page()
    reloaded.query_params[TOKEN] = token
    _ok(reloaded.run())
    assert reloaded.session_state["reviewer"] == "alice"
    assert reloaded.query_params[TOKEN] != token  # the address's token is spent and replaced at once
    assert "alice: 1 of" in reloaded.get("progress")[0].proto.text
    assert _save_button(reloaded).disabled
    for s, v in zip(SCALES, (1, 2, 3)):  # the first browser, still open, answers its next item
        at.radio(key=f"{s}_1").set_value(v)
    _ok(at.run())
    # signing out ends every session: the first browser's save is refused, the address signs nobody in
    _ok(next(b for b in reloaded.button if b.label == "Sign out").click().run())
    _ok(_save_button(at).click().run())
    assert any("This rating was not saved" in e.value for e in at.error) and "reviewer" not in at.session_state
    assert any(b.label == "Sign in" for b in at.button)
    assert len(ReviewStore(tmp_path / "review.sqlite3").all_ratings()) == 1
    again = page()
    again.query_params[TOKEN] = token
    _ok(again.run())
    assert "reviewer" not in again.session_state
    assert any("no longer valid" in i.value for i in again.info)


def test_results_and_export_need_the_admin_code(page, monkeypatch, tmp_path):
    _rate(_sign_in(_ok(page().run())), 0, comment="=HYPERLINK(\"x\")")
    # no admin code configured: nothing offered, and the page says how to turn it on
    at = _ok(page().run())
    assert not at.tabs and not at.get("download_button")
    assert any("RMD_ADMIN_CODE" in c.value for c in at.caption)
    monkeypatch.setenv("RMD_ADMIN_CODE", "boss")
    at = _ok(page().run())
    assert [t.label for t in at.tabs] == ["Rate", "Results (study admin)"]
    at.text_input(key="admin_code").input("demo")  # the reviewers' code does not open it
    _ok(next(b for b in at.button if b.label == "Open results").click().run())
    assert any("wrong study-admin code" in e.value for e in at.error)
    assert not at.get("download_button") and not at.dataframe
    at.text_input(key="admin_code").input("boss")
    _ok(next(b for b in at.button if b.label == "Open results").click().run())
    assert at.get("download_button") and at.dataframe
    assert any("1 ratings from 1 reviewers" in c.value for c in at.caption)
    per_model = next(d.value for d in at.dataframe if "range" in getattr(d.value, "columns", []))
    assert list(per_model.range.str.startswith("too few ratings")) == [True] * 3  # one rating: no interval
    at.selectbox(key="reset_who").set_value("alice")
    _ok(next(b for b in at.button if b.label == "Reset PIN").click().run())
    assert any("alice chooses a new PIN" in s.value for s in at.success)
    assert ReviewStore(tmp_path / "review.sqlite3").reviewer("alice").pin_hash == ""
