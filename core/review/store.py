"""Reviewer ratings in SQLite (WAL mode), safe for many reviewers saving at once.

Only pseudonymous case ids, method names, ratings and comments are stored: never an uploaded file.
All SQL is parameterised. Each reviewer gets a queue of (case, method) items in an order drawn from
their name, so it is random across reviewers but stable when they come back.
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from core.errors import RobustMDiffError
from core.paths import data_dir

SCALES = ("relevance", "usefulness", "trust")
DEMO_CODE = "demo"

SCHEMA = """
CREATE TABLE IF NOT EXISTS ratings (
    reviewer   TEXT NOT NULL,
    case_id    TEXT NOT NULL,
    method     TEXT NOT NULL,
    relevance  INTEGER NOT NULL CHECK (relevance BETWEEN 1 AND 5),
    usefulness INTEGER NOT NULL CHECK (usefulness BETWEEN 1 AND 5),
    trust      INTEGER NOT NULL CHECK (trust BETWEEN 1 AND 5),
    comment    TEXT NOT NULL DEFAULT '',
    saved_at   REAL NOT NULL,
    PRIMARY KEY (reviewer, case_id, method)
);
"""


def reviewer_code() -> str:
    """The shared code reviewers must give, from the RMD_REVIEWER_CODE environment variable."""
    return os.environ.get("RMD_REVIEWER_CODE", "")


def default_db() -> Path:
    return Path(os.environ.get("RMD_REVIEW_DB", data_dir() / "review.sqlite3"))


@dataclass(frozen=True)
class Item:
    case_id: str
    method: str


class ReviewStore:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_db()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

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
    def check_code(given: str) -> None:
        expected = reviewer_code()
        if not expected:
            raise RobustMDiffError("reviewing is closed: no reviewer code is configured (set RMD_REVIEWER_CODE)")
        if given != expected:
            raise RobustMDiffError("wrong reviewer code")

    @staticmethod
    def queue(reviewer: str, cases: list[str], methods: list[str]) -> list[Item]:
        """Every (case, method) pair, shuffled with a seed drawn from the reviewer's name."""
        items = [Item(c, m) for c in cases for m in methods]
        seed = int(hashlib.sha256(reviewer.strip().lower().encode()).hexdigest()[:16], 16)
        random.Random(seed).shuffle(items)
        return items

    def save(self, reviewer: str, item: Item, relevance: int, usefulness: int, trust: int, comment: str = "") -> None:
        """Insert or update one rating, immediately and atomically."""
        reviewer = reviewer.strip()
        if not reviewer:
            raise RobustMDiffError("a reviewer name is required")
        values = (relevance, usefulness, trust)
        if not all(isinstance(v, int) and 1 <= v <= 5 for v in values):
            raise RobustMDiffError("ratings must be whole numbers from 1 to 5")
        with self._connect() as db:
            db.execute("INSERT INTO ratings (reviewer, case_id, method, relevance, usefulness, trust, comment, saved_at) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (reviewer, case_id, method) DO UPDATE SET "
                       "relevance = excluded.relevance, usefulness = excluded.usefulness, trust = excluded.trust, "
                       "comment = excluded.comment, saved_at = excluded.saved_at",
                       (reviewer, item.case_id, item.method, *values, comment[:5000], time.time()))

    def rated(self, reviewer: str) -> set[Item]:
        with self._connect() as db:
            rows = db.execute("SELECT case_id, method FROM ratings WHERE reviewer = ?", (reviewer.strip(),)).fetchall()
        return {Item(c, m) for c, m in rows}

    def rating(self, reviewer: str, item: Item) -> dict | None:
        with self._connect() as db:
            row = db.execute("SELECT relevance, usefulness, trust, comment FROM ratings WHERE reviewer = ? AND "
                             "case_id = ? AND method = ?", (reviewer.strip(), item.case_id, item.method)).fetchone()
        return None if row is None else dict(zip((*SCALES, "comment"), row))

    def all_ratings(self) -> list[dict]:
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM ratings ORDER BY saved_at").fetchall()]
