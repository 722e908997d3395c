"""Reviewer ratings in SQLite (WAL mode), safe for many reviewers saving at once.

Only pseudonymous case ids, model and method names, ratings, comments and each reviewer's salted PIN hash
are stored: never an uploaded file. All SQL is parameterised. Each reviewer gets a queue of
(case, model, method) items in an order drawn from their name, so it is random across reviewers but stable
when they come back; the page shows neither the model nor the method (two blinded factors).

Timestamps are ISO-8601 UTC strings (`2026-11-26T07:20:00Z`). Databases written before that kept epoch
seconds; they are converted once when opened (schema version 1) and again on read, to be safe.
Schema version 2 adds the model to every rating (the primary key becomes reviewer, case, model, method);
ratings from before it were all of the one model the study then had, RobustMDiff, and are kept under
model 'robustmdiff'. Schema version 3 adds server-side sessions and sign-in attempts (their SQL is
core/review/sessions.py; core/review/auth.py says what they are for); their times are epoch seconds
(internal bookkeeping, never exported; the clock can be injected and sub-second throttles compared). The
token secret it kept in `settings` is dropped: the secret lives apart from the ratings (`secret()`).

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
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from core.errors import RobustMDiffError
from core.paths import data_dir
from core.review.sessions import SignedOut, SignInRecords

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


class ReviewStore(SignInRecords):
    """The ratings, reviewers and studies; sessions, attempts and the secret come from SignInRecords."""

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
