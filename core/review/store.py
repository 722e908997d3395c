"""Reviewer ratings in SQLite (WAL mode), safe for many reviewers saving at once.

Only pseudonymous case ids, model and method names, ratings, comments and each reviewer's salted PIN hash
are stored: never an uploaded file. All SQL is parameterised. Each reviewer gets a queue of
(case, model, method) items in an order drawn from their name, so it is random across reviewers but stable
when they come back; the page shows neither the model nor the method (two blinded factors).

Timestamps are ISO-8601 UTC strings (`2026-11-26T07:20:00Z`). Databases written before that kept epoch
seconds; they are converted once when opened (schema version 1) and again on read, to be safe.
Schema version 2 adds the model to every rating (the primary key becomes reviewer, case, model, method);
ratings from before it were all of the one model the study then had, RobustMDiff, and are kept under
model 'robustmdiff'. Schema version 3 adds server-side sessions and sign-in attempts (core/review/auth.py
says what they are for); their times are epoch seconds (internal bookkeeping, never exported; the clock can
be injected and sub-second throttles compared). The token secret it kept in `settings` is dropped: the
secret lives apart from the ratings (`secret()`).

A study on another model or data than the shipped one (issue 26) keeps this schema: its ratings' model names
are qualified by the study's key (core/review/models.py: Study), and `settings` notes in words which model
and data each study key stands for (`note_study`), for the export.

Durability: WAL. Ratings, registrations and what ends sessions commit with synchronous=FULL: once
reported saved they survive a killed process and a power cut (one fsync, a few milliseconds). Sign-in
bookkeeping (attempts, session renewals, reload tokens) commits with NORMAL: it survives a killed process,
and a power cut may forget its last moments, which only makes a throttle briefly lenient or asks a
reviewer to sign in again; this keeps a guess from costing an fsync.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import random
import secrets
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from core.errors import RobustMDiffError
from core.paths import data_dir
from core.review.throttle import KNOWN_FOR, MAX_PIN_FAILURES, NAME_FAILURES, PIN, WINDOW, History, refusal

SCALES = ("relevance", "usefulness", "trust")
DEMO_CODE = "demo"
SCHEMA_VERSION = 3
REFERENCE_MODEL = "robustmdiff"  # the model every comparison is made against
ISO = "%Y-%m-%dT%H:%M:%SZ"
STUDY_SETTING = "study:"  # settings key prefix: which model and data each study runs on, in words

SCHEMA = """
CREATE TABLE IF NOT EXISTS ratings (
    reviewer   TEXT NOT NULL,
    case_id    TEXT NOT NULL,
    model      TEXT NOT NULL,
    method     TEXT NOT NULL,
    relevance  INTEGER NOT NULL CHECK (relevance BETWEEN 1 AND 5),
    usefulness INTEGER NOT NULL CHECK (usefulness BETWEEN 1 AND 5),
    trust      INTEGER NOT NULL CHECK (trust BETWEEN 1 AND 5),
    comment    TEXT NOT NULL DEFAULT '',
    saved_at   TEXT NOT NULL,
    PRIMARY KEY (reviewer, case_id, model, method)
);
CREATE TABLE IF NOT EXISTS reviewers (
    name         TEXT PRIMARY KEY COLLATE NOCASE,  -- 'Alice' cannot register beside 'alice'
    pin_hash     TEXT NOT NULL,                    -- scrypt$n$r$p$salt$hash (hex), empty after a reset
    created_at   TEXT NOT NULL                     -- (schema 1-2 databases keep three unused columns after it)
);
CREATE TABLE IF NOT EXISTS settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id_hash        TEXT PRIMARY KEY,               -- keyed hash of the session id: the database alone signs nobody in
    reviewer       TEXT NOT NULL COLLATE NOCASE,
    code_hash      TEXT NOT NULL,                  -- keyed hash of the reviewer code it was opened under
    created        REAL NOT NULL,                  -- of the first sign-in (kept across reloads)
    last_used      REAL NOT NULL,
    expires        REAL NOT NULL,                  -- last use + IDLE, never past created + MAX_AGE
    reload_hash    TEXT UNIQUE,                    -- keyed hash of the one-use reload token in the page address
    reload_expires REAL
);
CREATE INDEX IF NOT EXISTS sessions_reviewer ON sessions (reviewer);
CREATE TABLE IF NOT EXISTS attempts (
    id      INTEGER PRIMARY KEY,
    kind    TEXT NOT NULL,                         -- reviewer_code, admin_code or pin (core/review/throttle.py)
    client  TEXT NOT NULL,                         -- keyed hash of the client's address
    name    TEXT NOT NULL COLLATE NOCASE,          -- the name a PIN was tried for, else ''
    at      REAL NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('pending', 'failed', 'ok'))
);
CREATE INDEX IF NOT EXISTS attempts_client ON attempts (kind, client, at);
CREATE INDEX IF NOT EXISTS attempts_name ON attempts (kind, name, at)
"""

# Legacy rows kept `saved_at` as epoch seconds (REAL); SQLite converts them in place.
MIGRATE_TIMESTAMPS = ("UPDATE ratings SET saved_at = strftime('%Y-%m-%dT%H:%M:%SZ', saved_at, 'unixepoch') "
                      "WHERE typeof(saved_at) IN ('real', 'integer')")

# Schema 2: ratings from before the model factor were all of RobustMDiff. SQLite cannot change a primary
# key in place, so the table is rebuilt (inside the migration's transaction) with model = 'robustmdiff'.
RATINGS_COLUMNS = "reviewer, case_id, model, method, relevance, usefulness, trust, comment, saved_at"
MIGRATE_MODEL = (
    "ALTER TABLE ratings RENAME TO ratings_v1",
    SCHEMA.split(";")[0],  # the current ratings table
    f"INSERT INTO ratings ({RATINGS_COLUMNS}) SELECT reviewer, case_id, '{REFERENCE_MODEL}', method, relevance, "
    "usefulness, trust, comment, saved_at FROM ratings_v1",
    "DROP TABLE ratings_v1",
)

MAX_NAME = 80
IDLE = 12 * 3600.0           # a session unused this long ends
MAX_AGE = 7 * 86400.0        # and none outlives this, reloads included
RELOAD_FOR = 10 * 60.0       # a reload token works once, within this long after the session's last use
TOUCH_EVERY = 60.0           # renew a session on use at most this often (one write, not one per page run)
SECRET_ENV = "RMD_REVIEW_SECRET"
log = logging.getLogger(__name__)


def reviewer_code() -> str:
    """The shared code reviewers must give, from the RMD_REVIEWER_CODE environment variable."""
    return os.environ.get("RMD_REVIEWER_CODE", "")


def default_db() -> Path:
    return Path(os.environ.get("RMD_REVIEW_DB", data_dir() / "review.sqlite3"))


def now_iso() -> str:
    return datetime.now(UTC).strftime(ISO)


def iso(value: str | float | None) -> str | None:
    """An ISO-8601 UTC string for a stored timestamp, whether it is already one or legacy epoch seconds."""
    if value is None or isinstance(value, str):
        return value
    return datetime.fromtimestamp(float(value), UTC).strftime(ISO)


@dataclass(frozen=True)
class Item:
    case_id: str
    method: str
    model: str = REFERENCE_MODEL


@dataclass(frozen=True)
class Reviewer:
    name: str  # as first registered: the name ratings are stored under
    pin_hash: str


@dataclass(frozen=True)
class Session:
    id: str = field(repr=False)  # kept on the server (the page's session state), never shown, logged or in an address
    reviewer: str = ""


class SignedOut(RobustMDiffError):
    """The session has ended: signed out (here or elsewhere), PIN reset, study code changed, or idle."""

    def __init__(self) -> None:
        super().__init__("You were signed out (signed out elsewhere, your PIN was reset, the study code changed, "
                         "or you were away too long): sign in again. This rating was not saved.")


class ReviewStore:
    def __init__(self, path: str | Path | None = None, clock: Callable[[], float] = time.time):
        self.path = Path(path) if path else default_db()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.clock = clock  # epoch seconds for sessions and attempts; tests inject one
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            self._migrate(db)
        # Held open, never used: when the last connection to a WAL database closes, SQLite checkpoints and
        # removes the WAL (an fsync each time); with this one open, an operation costs ~1 ms, not ~30.
        self._keep_wal = sqlite3.connect(self.path, check_same_thread=False)
        self._keep_wal.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()

    @contextmanager
    def _connect(self, synchronous: str = "FULL") -> Iterator[sqlite3.Connection]:
        """A connection; `synchronous`: FULL (durable at once) or NORMAL for bookkeeping (module docstring)."""
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA busy_timeout=30000")
        db.execute(f"PRAGMA synchronous={synchronous}")
        try:
            yield db
        finally:
            db.close()

    @contextmanager
    def _transaction(self, synchronous: str = "FULL") -> Iterator[sqlite3.Connection]:
        """One write transaction: BEGIN IMMEDIATE takes the write lock first, so what it reads stays true
        until it commits (decide-then-record cannot interleave with another writer)."""
        with self._connect(synchronous) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """Create or upgrade the schema once; BEGIN IMMEDIATE makes concurrent openers take turns."""
        if db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                for statement in SCHEMA.split(";"):  # (no ";" inside SCHEMA comments)
                    if statement.strip():
                        db.execute(statement)
                db.execute(MIGRATE_TIMESTAMPS)  # first: the rebuilt table's TEXT column would keep epochs as text
                columns = {row[1] for row in db.execute("PRAGMA table_info(ratings)")}
                if "model" not in columns:  # a database from before schema 2
                    for statement in MIGRATE_MODEL:
                        db.execute(statement)
                db.execute("DELETE FROM settings WHERE key = 'token_secret'")  # schema 3: the secret lives apart
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @staticmethod
    def check_code(given: str) -> None:
        from core.review.auth import check_reviewer_code  # the check lives with the rest of sign-in

        check_reviewer_code(given)

    @staticmethod
    def queue(reviewer: str, cases: list[str], methods: list[str],
              models: list[str] | tuple[str, ...] = (REFERENCE_MODEL,)) -> list[Item]:
        """Every (case, model, method) combination once, shuffled with a seed drawn from the reviewer's name.

        With the one model RobustMDiff the order is the one reviewers had before the model factor, so a
        reviewer part-way through keeps their queue."""
        items = [Item(c, m, model) for c in cases for model in models for m in methods]
        seed = int(hashlib.sha256(reviewer.strip().lower().encode()).hexdigest()[:16], 16)
        random.Random(seed).shuffle(items)
        return items

    # ---- ratings ------------------------------------------------------------------------------------
    def save(self, reviewer: str, item: Item, relevance: int, usefulness: int, trust: int, comment: str = "",
             session: str | None = None) -> None:
        """Insert or update one rating, immediately and atomically (durable once this returns).

        With `session` (what the page passes) the session is re-validated in the same transaction as the
        write: an ended one raises SignedOut and nothing is written. Without it the caller vouches for the
        reviewer (scripts, tests)."""
        reviewer = reviewer.strip()
        if not reviewer:
            raise RobustMDiffError("a reviewer name is required")
        values = (relevance, usefulness, trust)
        if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 5 for v in values):
            raise RobustMDiffError("please answer every question with a rating from 1 to 5")
        with self._transaction() as db:
            if session is not None:
                owner = self._valid_session(db, session)
                if owner is None or owner.casefold() != reviewer.casefold():
                    raise SignedOut()
            db.execute(f"INSERT INTO ratings ({RATINGS_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                       "ON CONFLICT (reviewer, case_id, model, method) DO UPDATE SET "
                       "relevance = excluded.relevance, usefulness = excluded.usefulness, trust = excluded.trust, "
                       "comment = excluded.comment, saved_at = excluded.saved_at",
                       (reviewer, item.case_id, item.model, item.method, *values, comment[:5000], now_iso()))

    def rated(self, reviewer: str) -> set[Item]:
        with self._connect() as db:
            rows = db.execute("SELECT case_id, method, model FROM ratings WHERE reviewer = ?",
                              (reviewer.strip(),)).fetchall()
        return {Item(c, m, model) for c, m, model in rows}

    def rating(self, reviewer: str, item: Item) -> dict | None:
        with self._connect() as db:
            row = db.execute("SELECT relevance, usefulness, trust, comment FROM ratings WHERE reviewer = ? AND "
                             "case_id = ? AND model = ? AND method = ?",
                             (reviewer.strip(), item.case_id, item.model, item.method)).fetchone()
        return None if row is None else dict(zip((*SCALES, "comment"), row))

    def all_ratings(self) -> list[dict]:
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            rows = [dict(r) for r in db.execute(f"SELECT {RATINGS_COLUMNS} FROM ratings").fetchall()]
        for r in rows:
            r["saved_at"] = iso(r["saved_at"])
        return sorted(rows, key=lambda r: (r["saved_at"], r["reviewer"], r["case_id"], r["model"], r["method"]))

    # ---- studies (which model and data a qualified model name's ratings are of) ----------------------------
    def note_study(self, key: str, text: str) -> None:
        """Remember in words which model and data study `key` runs on (core/review/models.py: Study), so that
        an export names them; the settings table, so that the schema stays as it is."""
        with self._connect("NORMAL") as db:
            db.execute("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                       "value = excluded.value", (f"{STUDY_SETTING}{key}", text))

    def studies(self) -> dict[str, str]:
        """Every noted study: key -> its model and data in words."""
        with self._connect() as db:
            rows = db.execute("SELECT key, value FROM settings WHERE key LIKE ?", (f"{STUDY_SETTING}%",)).fetchall()
        return {k[len(STUDY_SETTING):]: v for k, v in rows}

    # ---- reviewers (PIN-bound names) ----------------------------------------------------------------
    def reviewer(self, name: str) -> Reviewer | None:
        with self._connect() as db:
            row = db.execute("SELECT name, pin_hash FROM reviewers WHERE name = ?", (name.strip(),)).fetchone()
        return None if row is None else Reviewer(*row)

    def register(self, name: str, pin_hash: str) -> bool:
        """Claim a name; False when someone registered it first (the caller then checks the PIN instead)."""
        name = name.strip()
        if not name or len(name) > MAX_NAME:
            raise RobustMDiffError(f"please give a reviewer name of 1 to {MAX_NAME} characters")
        with self._connect() as db:
            cur = db.execute("INSERT INTO reviewers (name, pin_hash, created_at) VALUES (?, ?, ?) ON CONFLICT (name) "
                             "DO UPDATE SET pin_hash = excluded.pin_hash WHERE reviewers.pin_hash = ''",
                             (name, pin_hash, now_iso()))
        return cur.rowcount == 1

    def reviewer_names(self) -> list[str]:
        with self._connect() as db:
            return [r[0] for r in db.execute("SELECT name FROM reviewers ORDER BY name").fetchall()]

    def reset_pin(self, name: str) -> None:
        """The study admin's remedy for a forgotten PIN: the reviewer chooses a new one at their next
        sign-in (their ratings stay); every open session of theirs ends at once."""
        with self._transaction() as db:
            db.execute("UPDATE reviewers SET pin_hash = '' WHERE name = ?", (name,))
            db.execute("DELETE FROM sessions WHERE reviewer = ?", (name,))

    # ---- sign-in attempts (the policy is core/review/throttle.py) ----------------------------------------
    def begin_attempt(self, kind: str, client: str, name: str = "") -> int:
        """Decide and record one guess in one transaction, before it is evaluated: raises Throttled when it
        must wait, else records it as pending (pending counts as failed until finish_attempt says otherwise)."""
        now, client, name = self.clock(), self._keyed("client", client), name.strip()
        with self._transaction("NORMAL") as db:
            db.execute("DELETE FROM attempts WHERE at < ? OR (outcome != 'ok' AND at < ?)",
                       (now - KNOWN_FOR, now - WINDOW))

            def failures(scope: str, args: tuple, limit: int) -> list[float]:
                """Times of failures in the window after the scope's last success (in the order recorded)."""
                since = db.execute(f"SELECT MAX(id) FROM attempts WHERE kind = ? AND {scope} AND outcome = 'ok'",
                                   (kind, *args)).fetchone()[0]
                return [r[0] for r in db.execute(
                    f"SELECT at FROM attempts WHERE kind = ? AND {scope} AND outcome != 'ok' AND id > ? AND at > ? "
                    "ORDER BY id DESC LIMIT ?", (kind, *args, since or 0, now - WINDOW, limit))]

            by_client = failures("client = ?", (client,), -1)
            history = History(len(by_client), by_client[0] if by_client else None)
            if kind == PIN:
                known = db.execute("SELECT 1 FROM attempts WHERE kind = ? AND client = ? AND name = ? AND "
                                   "outcome = 'ok' LIMIT 1", (kind, client, name)).fetchone()
                history = History(history.client_failures, history.client_last,
                                  tuple(failures("client = ? AND name = ?", (client, name), MAX_PIN_FAILURES)),
                                  tuple(failures("name = ?", (name,), NAME_FAILURES)), known is not None)
            refused = refusal(kind, history, now)
            if refused is not None:
                raise refused
            return db.execute("INSERT INTO attempts (kind, client, name, at, outcome) VALUES (?, ?, ?, ?, 'pending')",
                              (kind, client, name, now)).lastrowid

    def finish_attempt(self, attempt: int, ok: bool) -> None:
        with self._connect("NORMAL") as db:
            db.execute("UPDATE attempts SET outcome = ? WHERE id = ?", ("ok" if ok else "failed", attempt))

    def remember_client(self, client: str, name: str) -> None:
        """A client that has just registered a name counts as one that signed in as it (throttle.KNOWN_FOR)."""
        with self._connect("NORMAL") as db:
            db.execute("INSERT INTO attempts (kind, client, name, at, outcome) VALUES (?, ?, ?, ?, 'ok')",
                       (PIN, self._keyed("client", client), name.strip(), self.clock()))

    # ---- sessions ---------------------------------------------------------------------------------------
    def open_session(self, reviewer: str) -> Session:
        """A new session for a reviewer who has just given their PIN."""
        now, sid = self.clock(), secrets.token_urlsafe(32)
        with self._transaction("NORMAL") as db:
            db.execute("DELETE FROM sessions WHERE expires <= ?", (now,))
            db.execute("INSERT INTO sessions (id_hash, reviewer, code_hash, created, last_used, expires) "
                       "VALUES (?, ?, ?, ?, ?, ?)",
                       (self._keyed("session", sid), reviewer, self._code_hash(), now, now, now + IDLE))
        return Session(sid, reviewer)

    def _valid_session(self, db: sqlite3.Connection, sid: str) -> str | None:
        """The session's reviewer, renewed, or None when it has ended; call inside a transaction."""
        now, key = self.clock(), self._keyed("session", sid)
        row = db.execute("SELECT reviewer, last_used FROM sessions WHERE id_hash = ? AND expires > ? AND code_hash = ?",
                         (key, now, self._code_hash())).fetchone()
        if row is None:
            return None
        if now - row[1] >= TOUCH_EVERY:
            db.execute("UPDATE sessions SET last_used = ?, expires = MIN(? + ?, created + ?), reload_expires = "
                       "CASE WHEN reload_hash IS NULL THEN NULL ELSE ? END WHERE id_hash = ?",
                       (now, now, IDLE, MAX_AGE, now + RELOAD_FOR, key))
        return row[0]

    def session(self, sid: str) -> Session | None:
        """The session if it is still open (renewed: it lives IDLE more), else None."""
        if not sid:
            return None
        with self._transaction("NORMAL") as db:
            reviewer = self._valid_session(db, sid)
        return None if reviewer is None else Session(sid, reviewer)

    def reload_token(self, sid: str) -> str:
        """A fresh one-use token for the page address (it replaces the session's previous one), so that a
        reload of the page finds the session again; raises SignedOut when the session has ended."""
        token = secrets.token_urlsafe(24)
        with self._transaction("NORMAL") as db:
            if self._valid_session(db, sid) is None:
                raise SignedOut()
            db.execute("UPDATE sessions SET reload_hash = ?, reload_expires = ? WHERE id_hash = ?",
                       (self._keyed("reload", token), self.clock() + RELOAD_FOR, self._keyed("session", sid)))
        return token

    def exchange_reload(self, token: str) -> Session | None:
        """The session a reload token stands for, as a new session of the same sign-in (each browser tab
        has its own), or None when the token is unknown, used, expired, or its session has ended. The
        token is spent either way."""
        if not token or len(token) > 200:
            return None
        now, key = self.clock(), self._keyed("reload", token)
        with self._connect("NORMAL") as db:  # most addresses hold no live token: look before taking the write lock
            if db.execute("SELECT 1 FROM sessions WHERE reload_hash = ?", (key,)).fetchone() is None:
                return None
        sid = secrets.token_urlsafe(32)
        with self._transaction("NORMAL") as db:
            row = db.execute("SELECT reviewer, code_hash, created, reload_expires, expires FROM sessions "
                             "WHERE reload_hash = ?", (key,)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE sessions SET reload_hash = NULL, reload_expires = NULL WHERE reload_hash = ?", (key,))
            reviewer, code_hash, created, reload_expires, expires = row
            if reload_expires <= now or expires <= now or code_hash != self._code_hash():
                return None
            db.execute("INSERT INTO sessions (id_hash, reviewer, code_hash, created, last_used, expires) "
                       "VALUES (?, ?, ?, ?, ?, MIN(?, ?))", (self._keyed("session", sid), reviewer, code_hash,
                                                            created, now, now + IDLE, created + MAX_AGE))
        return Session(sid, reviewer)

    def end_sessions(self, reviewer: str) -> None:
        """Sign a reviewer out everywhere: every session of theirs ends at once."""
        with self._connect() as db:
            db.execute("DELETE FROM sessions WHERE reviewer = ?", (reviewer,))

    # ---- the secret (apart from the ratings) ------------------------------------------------------------
    @property
    def secret_path(self) -> Path:
        return self.path.with_name(self.path.name + ".secret")

    def secret(self) -> bytes:
        """The key of every hash the sessions and attempts keep: RMD_REVIEW_SECRET when set, else the file
        `<database>.secret` beside the database (owner-only, created on first use). Read on every use, so
        replacing it ends every session without a restart. Never in the database, never exported."""
        if given := os.environ.get(SECRET_ENV):
            if len(given) < 32:
                raise RobustMDiffError(f"{SECRET_ENV} is too short: give at least 32 random characters, e.g. the "
                                       "output of: python -c 'import secrets; print(secrets.token_hex(32))'")
            return hashlib.sha256(given.encode()).digest()
        path = self.secret_path
        if not path.exists():
            tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # atomic, and never over a secret another process wrote first
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("review secret %s was readable by others: made owner-only", path.name)
            path.chmod(0o600)
        try:
            secret = bytes.fromhex(path.read_text().strip())
        except ValueError:
            secret = b""
        if len(secret) != 32:
            raise RobustMDiffError(f"the review secret file {path.name} is damaged: delete it (a new one is made; "
                                   "every reviewer signs in again)")
        return secret

    def _keyed(self, purpose: str, value: str) -> str:
        return hmac.new(self.secret(), f"{purpose}\0{value}".encode(), hashlib.sha256).hexdigest()

    def _code_hash(self) -> str:
        return self._keyed("code", reviewer_code())
