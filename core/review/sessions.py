"""The sign-in half of the review database: server-side sessions, one-use reload tokens, recorded sign-in
attempts, and the secret that keys every hash they keep.

`SignInRecords` is mixed into core/review/store.py: ReviewStore, which owns the connection, the schema
(the `sessions` and `attempts` tables are schema version 3) and the durability rules: what ends a session
commits with synchronous=FULL, the bookkeeping here with NORMAL (store.py's docstring says why). The
policy of who may guess how often is core/review/throttle.py; what the sessions are for, core/review/auth.py.
Times here are epoch seconds from the store's injectable clock; never exported.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import sqlite3
import stat
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import RobustMDiffError
from core.review.throttle import KNOWN_FOR, MAX_PIN_FAILURES, NAME_FAILURES, PIN, WINDOW, History, refusal

IDLE = 12 * 3600.0           # a session unused this long ends
MAX_AGE = 7 * 86400.0        # and none outlives this, reloads included
RELOAD_FOR = 10 * 60.0       # a reload token works once, within this long after the session's last use
TOUCH_EVERY = 60.0           # renew a session on use at most this often (one write, not one per page run)
SECRET_ENV = "RMD_REVIEW_SECRET"
log = logging.getLogger(__name__)


def reviewer_code() -> str:
    """The shared code reviewers must give, from the RMD_REVIEWER_CODE environment variable."""
    return os.environ.get("RMD_REVIEWER_CODE", "")


@dataclass(frozen=True)
class Session:
    id: str = field(repr=False)  # kept on the server (the page's session state), never shown, logged or in an address
    reviewer: str = ""


class SignedOut(RobustMDiffError):
    """The session has ended: signed out (here or elsewhere), PIN reset, study code changed, or idle."""

    def __init__(self) -> None:
        super().__init__("You were signed out (signed out elsewhere, your PIN was reset, the study code changed, "
                         "or you were away too long): sign in again. This rating was not saved.")


class SignInRecords:
    """Sessions, reload tokens, attempts and the secret, on the database of the class this is mixed into,
    which provides `path`, `clock`, `_connect(synchronous)` and `_transaction(synchronous)`."""

    path: Path
    clock: Callable[[], float]
    _connect: Callable[..., AbstractContextManager[sqlite3.Connection]]
    _transaction: Callable[..., AbstractContextManager[sqlite3.Connection]]

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
