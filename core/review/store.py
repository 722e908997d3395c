"""Reviewer ratings in SQLite (WAL mode), safe for many reviewers saving at once.

Only pseudonymous case ids, model and method names, ratings, comments and each reviewer's salted PIN hash
are stored: never an uploaded file. All SQL is parameterised. Each reviewer gets a queue of
(case, model, method) items in an order drawn from their name, so it is random across reviewers but stable
when they come back; the page shows neither the model nor the method (two blinded factors).

Timestamps are ISO-8601 UTC strings (`2026-11-26T07:20:00Z`). Databases written before that kept epoch
seconds; they are converted once when opened (schema version 1) and again on read, to be safe.
Schema version 2 adds the model to every rating (the primary key becomes reviewer, case, model, method);
ratings from before it were all of the one model the study then had, RobustMDiff, and are kept under
model 'robustmdiff'.
"""

from __future__ import annotations

import hashlib
import os
import random
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from core.errors import RobustMDiffError
from core.paths import data_dir

SCALES = ("relevance", "usefulness", "trust")
DEMO_CODE = "demo"
SCHEMA_VERSION = 2
REFERENCE_MODEL = "robustmdiff"  # the model every comparison is made against
ISO = "%Y-%m-%dT%H:%M:%SZ"

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
    created_at   TEXT NOT NULL,
    failures     INTEGER NOT NULL DEFAULT 0,       -- wrong PINs in a row
    locked_until TEXT,
    generation   INTEGER NOT NULL DEFAULT 0        -- bumped on sign-out: older sign-in links stop working
);
CREATE TABLE IF NOT EXISTS settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
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
MAX_FAILURES = 5  # wrong PINs in a row before the name is locked for LOCK_FOR
LOCK_FOR = timedelta(minutes=5)


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


def _parse_iso(value: str) -> datetime:
    return datetime.strptime(value, ISO).replace(tzinfo=UTC)


@dataclass(frozen=True)
class Item:
    case_id: str
    method: str
    model: str = REFERENCE_MODEL


@dataclass(frozen=True)
class Reviewer:
    name: str  # as first registered: the name ratings are stored under
    pin_hash: str
    failures: int
    locked_until: str | None
    generation: int


class ReviewStore:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_db()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._secrets: dict[str, bytes] = {}
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            self._migrate(db)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA busy_timeout=30000")
        db.execute("PRAGMA synchronous=NORMAL")
        try:
            yield db
        finally:
            db.close()

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
    def save(self, reviewer: str, item: Item, relevance: int, usefulness: int, trust: int, comment: str = "") -> None:
        """Insert or update one rating, immediately and atomically. The caller has signed the reviewer in."""
        reviewer = reviewer.strip()
        if not reviewer:
            raise RobustMDiffError("a reviewer name is required")
        values = (relevance, usefulness, trust)
        if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 5 for v in values):
            raise RobustMDiffError("please answer every question with a rating from 1 to 5")
        with self._connect() as db:
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

    # ---- reviewers (PIN-bound names) ----------------------------------------------------------------
    def reviewer(self, name: str) -> Reviewer | None:
        with self._connect() as db:
            row = db.execute("SELECT name, pin_hash, failures, locked_until, generation FROM reviewers "
                             "WHERE name = ?", (name.strip(),)).fetchone()
        return None if row is None else Reviewer(*row)

    def register(self, name: str, pin_hash: str) -> bool:
        """Claim a name; False when someone registered it first (the caller then checks the PIN instead)."""
        name = name.strip()
        if not name or len(name) > MAX_NAME:
            raise RobustMDiffError(f"please give a reviewer name of 1 to {MAX_NAME} characters")
        with self._connect() as db:
            cur = db.execute("INSERT INTO reviewers (name, pin_hash, created_at) VALUES (?, ?, ?) ON CONFLICT (name) "
                             "DO UPDATE SET pin_hash = excluded.pin_hash, failures = 0, locked_until = NULL "
                             "WHERE reviewers.pin_hash = ''", (name, pin_hash, now_iso()))
        return cur.rowcount == 1

    def reviewer_names(self) -> list[str]:
        with self._connect() as db:
            return [r[0] for r in db.execute("SELECT name FROM reviewers ORDER BY name").fetchall()]

    def reset_pin(self, name: str) -> None:
        """The study admin's remedy for a forgotten PIN: the reviewer chooses a new one at their next
        sign-in (their ratings stay); every earlier sign-in ends."""
        with self._connect() as db:
            db.execute("UPDATE reviewers SET pin_hash = '', failures = 0, locked_until = NULL, "
                       "generation = generation + 1 WHERE name = ?", (name,))

    def record_pin_attempt(self, name: str, ok: bool) -> None:
        """Reset the failure count on success; lock the name for a while after too many wrong PINs."""
        with self._connect() as db:
            if ok:
                db.execute("UPDATE reviewers SET failures = 0, locked_until = NULL WHERE name = ?", (name,))
                return
            db.execute("UPDATE reviewers SET failures = failures + 1, locked_until = CASE WHEN failures + 1 >= ? "
                       "THEN ? ELSE locked_until END WHERE name = ?",
                       (MAX_FAILURES, (datetime.now(UTC) + LOCK_FOR).strftime(ISO), name))

    @staticmethod
    def locked(reviewer: Reviewer) -> bool:
        return bool(reviewer.locked_until) and _parse_iso(reviewer.locked_until) > datetime.now(UTC)

    def sign_out_everywhere(self, name: str) -> None:
        with self._connect() as db:
            db.execute("UPDATE reviewers SET generation = generation + 1 WHERE name = ?", (name,))

    # ---- settings -----------------------------------------------------------------------------------
    def secret(self, key: str = "token_secret") -> bytes:
        """A random server secret created once per database (signs sign-in tokens); never exported."""
        if key not in self._secrets:
            with self._connect() as db:
                db.execute("INSERT OR IGNORE INTO settings (key, value) VALUES (?, ?)", (key, secrets.token_hex(32)))
                value = db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()[0]
            self._secrets[key] = bytes.fromhex(value)
        return self._secrets[key]
