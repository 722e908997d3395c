"""Issue 27: sign-in that resists guessing, sessions that can be ended, a save that survives a kill.

Real SQLite files in tmp_path and the real scrypt, at a lower cost (each stored hash carries its own
parameters); a clock is injected where time must pass, so nothing here sleeps."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading

import pytest

from core.errors import RobustMDiffError
from core.paths import ROOT
from core.review import auth
from core.review.sessions import IDLE, MAX_AGE, RELOAD_FOR, SignedOut
from core.review.store import Item, ReviewStore
from core.review.throttle import FREE_FAILURES, MAX_BACKOFF, MAX_PIN_FAILURES, NAME_FAILURES, WINDOW, Throttled

PIN = "right-pin"


class Clock:
    def __init__(self) -> None:
        self.now = 1.8e9

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def store(tmp_path, monkeypatch) -> ReviewStore:
    monkeypatch.setattr(auth, "SCRYPT", {"n": 2**8, "r": 8, "p": 1})  # the real scrypt, cheaper
    monkeypatch.setenv("RMD_REVIEWER_CODE", "demo")
    monkeypatch.setenv("RMD_ADMIN_CODE", "boss")
    monkeypatch.delenv("RMD_REVIEW_SECRET", raising=False)
    return ReviewStore(tmp_path / "review.sqlite3", clock=Clock())


@pytest.fixture
def evaluations(monkeypatch) -> list[str]:
    """Every PIN that reaches scrypt."""
    seen: list[str] = []
    real = auth.verify_pin

    def counting(pin: str, stored: str) -> bool:
        seen.append(pin)
        return real(pin, stored)

    monkeypatch.setattr(auth, "verify_pin", counting)
    return seen


def _try(guess) -> str:
    try:
        guess()
        return "ok"
    except Throttled:
        return "refused"
    except RobustMDiffError:
        return "wrong"


# ---- guessing ------------------------------------------------------------------------------------------------
def test_100_concurrent_wrong_pins_for_one_reviewer_evaluate_at_most_5(store, evaluations):
    auth.sign_in(store, "alice", "demo", PIN, PIN, client="home")
    start = threading.Barrier(100)
    outcomes: list[str] = []

    def guess(i: int) -> None:
        start.wait()
        outcomes.append(_try(lambda: auth.sign_in(store, "alice", "demo", f"{7300 + i}", client="attacker")))

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(evaluations) == MAX_PIN_FAILURES == 5, len(evaluations)
    assert outcomes.count("wrong") == 5 and outcomes.count("refused") == 95
    with pytest.raises(Throttled, match="paused.*try again in 15 min"):  # the right PIN waits there too
        auth.sign_in(store, "alice", "demo", PIN, client="attacker")
    assert auth.sign_in(store, "alice", "demo", PIN, client="office").reviewer == "alice"  # not from elsewhere


def test_the_reviewer_signs_in_from_another_client_while_an_attacker_keeps_failing(store, evaluations):
    auth.sign_in(store, "alice", "demo", PIN, PIN, client="home")
    for step in range(240):  # two hours, a wrong PIN every 30 s from one address
        _try(lambda: auth.sign_in(store, "alice", "demo", "0000", client="attacker"))
        if step % 40 == 20:  # from home, and from a connection never used before
            assert auth.sign_in(store, "alice", "demo", PIN, client="home").reviewer == "alice"
            assert auth.sign_in(store, "alice", "demo", PIN, client=f"hotel-{step}").reviewer == "alice"
        store.clock.advance(30)
    guessed = [p for p in evaluations if p == "0000"]
    assert len(guessed) <= MAX_PIN_FAILURES * (2 * 3600 // WINDOW + 1)  # 5 per quarter of an hour


def test_a_guess_spread_over_many_addresses_stops_at_the_name_limit_but_known_devices_get_in(store, evaluations):
    auth.sign_in(store, "alice", "demo", PIN, PIN, client="home")
    for i in range(40):
        for _ in range(2):
            _try(lambda: auth.sign_in(store, "alice", "demo", "0000", client=f"10.0.0.{i}"))
    assert evaluations.count("0000") == NAME_FAILURES
    with pytest.raises(Throttled, match="new connections"):
        auth.sign_in(store, "alice", "demo", PIN, client="10.9.9.9")
    assert auth.sign_in(store, "alice", "demo", PIN, client="home").reviewer == "alice"  # where she signed in before
    store.clock.advance(WINDOW)
    assert auth.sign_in(store, "alice", "demo", PIN, client="10.9.9.9").reviewer == "alice"


@pytest.mark.parametrize("which", ["reviewer", "admin"])
def test_1000_code_guesses_from_one_client_are_slowed_to_1_per_second_after_10(store, which):
    def guess(code: str, client: str = "attacker"):
        if which == "reviewer":
            return auth.sign_in(store, "alice", code, PIN, PIN, client=client)
        return auth.open_admin(store, code, client=client)

    evaluated: list[float] = []
    waits: list[float] = []
    for i in range(1000):  # one guess every 0.25 s: 250 s
        try:
            guess(f"guess-{i}")
        except Throttled as e:
            assert f"Too many wrong {'reviewer' if which == 'reviewer' else 'study-admin'} codes" in str(e)
            waits.append(e.wait)
        except RobustMDiffError as e:
            assert "wrong" in str(e)
            evaluated.append(store.clock())
        store.clock.advance(0.25)
    start = store.clock() - 250
    assert evaluated[:FREE_FAILURES] == [start + 0.25 * i for i in range(FREE_FAILURES)]  # the first 10 at once
    gaps = [b - a for a, b in zip(evaluated[FREE_FAILURES - 1:], evaluated[FREE_FAILURES:])]
    assert gaps and min(gaps) >= 1.0, gaps  # then at most one a second, the wait growing
    assert len(evaluated) <= FREE_FAILURES + 250 and len(evaluated) < 25 and len(waits) == 1000 - len(evaluated)
    assert max(waits) <= MAX_BACKOFF
    right = "demo" if which == "reviewer" else "boss"
    guess(right, client="colleague")  # another connection is not slowed
    with pytest.raises(Throttled):
        guess(right)
    store.clock.advance(MAX_BACKOFF)
    guess(right)  # after the wait the right code works, and clears the count
    assert _try(lambda: guess("again")) == "wrong"


def test_unknown_names_and_wrong_pins_get_the_same_answer_after_the_same_work(store, evaluations):
    auth.sign_in(store, "alice", "demo", PIN, PIN)
    auth.sign_in(store, "bob", "demo", PIN, PIN)
    store.reset_pin("bob")
    answers = set()
    for name in ("alice", "nobody", "bob"):  # registered, unknown, PIN reset
        with pytest.raises(RobustMDiffError) as refused:
            auth.sign_in(store, name, "demo", "0000", client=f"from-{name}")
        answers.add(str(refused.value))
    assert answers == {auth.WRONG} and "no PIN" not in auth.WRONG
    assert evaluations == ["0000"] * 3  # one scrypt each, known name or not
    assert auth.sign_in(store, "carol", "demo", "new-pin", "new-pin").reviewer == "carol"  # registering works
    assert auth.sign_in(store, "bob", "demo", "new-pin", "new-pin").reviewer == "bob"  # so does a reset name


def test_the_client_is_the_connection_or_what_a_trusted_proxy_appended(monkeypatch):
    monkeypatch.delenv(auth.TRUSTED_PROXY, raising=False)
    assert auth.client_key(None, {}) == auth.LOCAL
    assert auth.client_key("10.1.2.3", {"X-Forwarded-For": "6.6.6.6"}) == "10.1.2.3"  # a header alone proves nothing
    monkeypatch.setenv(auth.TRUSTED_PROXY, "1")
    assert auth.client_key(None, {"x-forwarded-for": "6.6.6.6, 10.0.0.7"}) == "10.0.0.7"  # the proxy's entry
    assert auth.client_key("10.1.2.3", {}) == "10.1.2.3"
    # the demo code is shown only to a browser on the server itself, never through a proxy
    assert auth.on_this_machine(None, {}) and not auth.on_this_machine("10.1.2.3", {})
    assert not auth.on_this_machine(None, {"X-Forwarded-For": "10.0.0.7"})


# ---- sessions ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("end", ["sign-out", "sign-out elsewhere", "PIN reset", "code change", "new secret"])
def test_a_session_is_refused_on_the_next_save_after(store, monkeypatch, end):
    here = auth.sign_in(store, "alice", "demo", PIN, PIN, client="laptop")
    there = auth.sign_in(store, "alice", "demo", PIN, client="tablet")
    token = store.reload_token(here.id)
    store.save("alice", Item("c1", "shap"), 4, 4, 4, session=here.id)
    if end == "sign-out":
        auth.sign_out(store, here.id)
    elif end == "sign-out elsewhere":
        auth.sign_out(store, there.id)
    elif end == "PIN reset":
        store.reset_pin("alice")
    elif end == "code change":
        monkeypatch.setenv("RMD_REVIEWER_CODE", "new-code")
    else:
        store.secret_path.unlink()  # rotation: a new secret is made on next use
    with pytest.raises(SignedOut, match="signed out.*sign in again"):
        store.save("alice", Item("c2", "shap"), 1, 1, 1, session=here.id)
    assert store.session(here.id) is None and store.exchange_reload(token) is None
    assert [r["case_id"] for r in store.all_ratings()] == ["c1"]


def test_a_session_cannot_save_for_someone_else(store):
    mine = auth.sign_in(store, "alice", "demo", PIN, PIN)
    auth.sign_in(store, "bob", "demo", PIN, PIN)
    with pytest.raises(SignedOut):
        store.save("bob", Item("c1", "shap"), 1, 1, 1, session=mine.id)
    store.save("ALICE", Item("c1", "shap"), 1, 1, 1, session=mine.id)  # her name, as typed
    assert [r["reviewer"] for r in store.all_ratings()] == ["ALICE"]


def test_sessions_are_short_lived_and_renewed_on_use_and_reload_tokens_work_once_and_soon(store):
    clock = store.clock
    session = auth.sign_in(store, "alice", "demo", PIN, PIN)
    token = store.reload_token(session.id)
    clock.advance(RELOAD_FOR - 60)
    store.save("alice", Item("c1", "shap"), 3, 3, 3, session=session.id)  # use renews the address's token too
    clock.advance(RELOAD_FOR - 60)
    reloaded = store.exchange_reload(token)
    assert reloaded is not None and store.exchange_reload(token) is None  # one reload
    stale = store.reload_token(reloaded.id)
    clock.advance(RELOAD_FOR + 1)
    assert store.exchange_reload(stale) is None  # an address left unused signs nobody in
    assert store.session(reloaded.id) is not None  # the open page still works, and is renewed
    clock.advance(IDLE - 1)
    assert store.session(reloaded.id) is not None
    clock.advance(IDLE + 1)
    assert store.session(reloaded.id) is None  # idle too long
    busy, start = auth.sign_in(store, "alice", "demo", PIN), clock()
    while clock() + IDLE - 3600 < start + MAX_AGE:  # used every 11 h, it lives on up to the maximum age
        clock.advance(IDLE - 3600)
        assert store.session(busy.id) is not None
    clock.advance(start + MAX_AGE + 1 - clock())  # less than IDLE since its last use
    assert store.session(busy.id) is None


def test_the_secret_lives_apart_owner_only_and_can_come_from_the_environment(store, monkeypatch, tmp_path):
    session = auth.sign_in(store, "alice", "demo", PIN, PIN)
    path = store.secret_path
    assert path.parent == store.path.parent and stat.S_IMODE(path.stat().st_mode) == 0o600
    written = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("review.sqlite3") and p != path)
    assert store.secret().hex().encode() not in written and store.secret() not in written
    assert sqlite3.connect(store.path).execute("SELECT COUNT(*) FROM settings").fetchone()[0] == 0
    path.chmod(0o644)
    store.secret()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # made owner-only again
    monkeypatch.setenv("RMD_REVIEW_SECRET", "x" * 40)  # the environment takes over, and ends every session
    assert store.session(session.id) is None
    again = auth.sign_in(store, "alice", "demo", PIN)
    assert store.session(again.id) is not None
    monkeypatch.setenv("RMD_REVIEW_SECRET", "y" * 40)  # rotated
    assert store.session(again.id) is None
    monkeypatch.setenv("RMD_REVIEW_SECRET", "short")
    with pytest.raises(RobustMDiffError, match="RMD_REVIEW_SECRET is too short"):
        store.secret()


# ---- a save that survives a kill ------------------------------------------------------------------------------
SAVER = """
import sys
from core.review.store import Item, ReviewStore
store = ReviewStore(sys.argv[1])
for i in range(100000):
    store.save("alice", Item(f"{sys.argv[3]}-{i}", "shap"), 1 + i % 5, 3, 4, "x" * 2000, session=sys.argv[2])
    print(i, flush=True)  # reported committed
"""


def test_killing_the_server_during_saves_loses_no_committed_rating(store):
    session = auth.sign_in(store, "alice", "demo", PIN, PIN)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for round, kill_after in enumerate((5, 20, 40)):
        child = subprocess.Popen([sys.executable, "-c", SAVER, str(store.path), session.id, f"r{round}"],
                                 stdout=subprocess.PIPE, text=True, env=env)
        reported = []
        for line in child.stdout:
            reported.append(int(line))
            if len(reported) == kill_after:
                child.send_signal(signal.SIGKILL)  # mid-save: the child saves without pause
                break
        reported += [int(line) for line in child.stdout]  # what it reported before dying
        child.wait(30)
        assert child.returncode == -signal.SIGKILL and len(reported) >= kill_after
        db = sqlite3.connect(store.path)
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        saved = sorted(int(c.split("-")[1]) for (c,) in db.execute(
            "SELECT case_id FROM ratings WHERE case_id LIKE ?", (f"r{round}-%",)))
        db.close()
        assert saved == list(range(len(saved))) and len(saved) >= len(reported)  # every reported save, no gap
    store.save("alice", Item("after", "shap"), 5, 5, 5, session=session.id)  # and the database goes on
    assert sqlite3.connect(store.path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
