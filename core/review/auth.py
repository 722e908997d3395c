"""Who may do what in the review study.

- Reviewers give the shared study code (RMD_REVIEWER_CODE), their name and a personal PIN (a salted
  scrypt hash in the store). First time here, or after the admin reset their PIN, they type the PIN twice:
  that registers the name; if the name is taken, the PIN decides as at any sign-in, so typing someone
  else's name cannot reach, let alone overwrite, their ratings.
- Guessing is throttled per client (the policy: core/review/throttle.py): each guess at a code or a PIN is
  decided and recorded in one transaction before it is evaluated, so guesses sent at once cannot slip
  past the limit. A wrong name and a wrong PIN get the same answer, after the same scrypt evaluation, so
  sign-in tells nobody which names exist.
- A signed-in reviewer holds a server-side session (core/review/sessions.py): short-lived, renewed on use,
  re-validated by every save. Sign-out, a PIN reset, a change of the reviewer code and a new secret end
  it at once. The page address holds only a one-use reload token, replaced at each reload.
- Results and export need a separate study-admin code (RMD_ADMIN_CODE): reviewers who see per-method
  results mid-study could tell which method made the explanations they rate (blinding).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Callable, Mapping

from core.errors import RobustMDiffError
from core.review.sessions import Session, reviewer_code
from core.review.store import MAX_NAME, ReviewStore
from core.review.throttle import ADMIN_CODE, PIN, REVIEWER_CODE

MIN_PIN, MAX_PIN = 4, 128
SCRYPT = {"n": 2**14, "r": 8, "p": 1}  # ~16 MiB, ~50 ms: slow for guessing, quick for one sign-in
LOCAL = "local"  # the client key of a connection from this machine (Streamlit gives it no address)
TRUSTED_PROXY = "RMD_TRUSTED_PROXY"  # "1": behind a reverse proxy that appends the client to X-Forwarded-For
WRONG = ("Unknown name or wrong PIN. First time here, or your PIN was reset? Type your new PIN twice (PIN and "
         "Repeat PIN). Forgot it? Ask the study admin to reset it.")
CLOSED = "reviewing is closed: no reviewer code is configured (set RMD_REVIEWER_CODE)"
TAKEN = ("This name cannot be registered with this PIN: choose another name, or, if the name is yours, sign in "
         "with your PIN alone.")


def admin_code() -> str:
    return os.environ.get("RMD_ADMIN_CODE", "")


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def check_reviewer_code(given: str) -> None:
    """The comparison alone; sign_in throttles it."""
    expected = reviewer_code()
    if not expected:
        raise RobustMDiffError(CLOSED)
    if not _same(given, expected):
        raise RobustMDiffError("wrong reviewer code")


def admin_enabled() -> bool:
    return bool(admin_code())


def _admin_configured() -> str:
    expected = admin_code()
    if not expected:
        raise RobustMDiffError("results and export are switched off: set RMD_ADMIN_CODE to a study-admin code "
                               "and restart the app")
    if _same(expected, reviewer_code()):
        raise RobustMDiffError("RMD_ADMIN_CODE must differ from the reviewer code (RMD_REVIEWER_CODE), or any "
                               "reviewer could open the results mid-study")
    return expected


def check_admin_code(given: str) -> None:
    """The comparison alone; open_admin throttles it."""
    if not _same(given, _admin_configured()):
        raise RobustMDiffError("wrong study-admin code")


def client_key(ip: str | None, headers: Mapping[str, str] | None = None) -> str:
    """Who is guessing, for throttling: the connection's address (None from this machine). Behind a reverse
    proxy every connection comes from the proxy, so with RMD_TRUSTED_PROXY=1 the address the proxy appended
    to X-Forwarded-For is used: its last entry (the ones before it are whatever the client sent)."""
    if os.environ.get(TRUSTED_PROXY) == "1":
        forwarded = next((v for k, v in (headers or {}).items() if k.lower() == "x-forwarded-for"), "")
        if last := forwarded.split(",")[-1].strip():
            return last
    return ip or LOCAL


def on_this_machine(ip: str | None, headers: Mapping[str, str] | None = None) -> bool:
    """A browser on the server itself: Streamlit gives it no address, and no proxy relayed it."""
    relayed = {"x-forwarded-for", "x-real-ip", "forwarded"}
    return ip is None and not any(k.lower() in relayed for k in (headers or {}))


def _guarded(store: ReviewStore, kind: str, client: str, name: str, evaluate: Callable[[], bool]) -> bool:
    """Evaluate one guess if the throttle lets it through (else Throttled is raised), recording the outcome."""
    attempt = store.begin_attempt(kind, client, name)
    ok = False
    try:
        ok = evaluate()
    finally:
        store.finish_attempt(attempt, ok)
    return ok


def open_admin(store: ReviewStore, given: str, client: str = LOCAL) -> None:
    """Let the study admin in, or raise: a wrong code is throttled per client like the reviewer code."""
    expected = _admin_configured()
    if not _guarded(store, ADMIN_CODE, client, "", lambda: _same(given, expected)):
        raise RobustMDiffError("wrong study-admin code")


# ---- PINs -----------------------------------------------------------------------------------------
def hash_pin(pin: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(pin.encode(), salt=salt, dklen=32, **SCRYPT)
    return f"scrypt${SCRYPT['n']}${SCRYPT['r']}${SCRYPT['p']}${salt.hex()}${digest.hex()}"


def verify_pin(pin: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        given = hashlib.scrypt(pin.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32)
        return hmac.compare_digest(given, bytes.fromhex(digest))
    except ValueError:
        return False


def _no_pin() -> str:
    """What an unknown name's PIN is checked against: the same scrypt work, a hash no PIN matches."""
    return f"scrypt${SCRYPT['n']}${SCRYPT['r']}${SCRYPT['p']}${'00' * 16}${'00' * 32}"


def sign_in(store: ReviewStore, name: str, code: str, pin: str, pin_again: str = "", client: str = LOCAL) -> Session:
    """A new session for the reviewer, after the study code and their PIN.

    With `pin_again` (first time here, or after a PIN reset) a free name is registered with the PIN, which
    must be typed the same twice, so a typo cannot lock the reviewer out; a taken name needs its PIN. A
    refusal leaves everything as it was."""
    name = name.strip()
    if not name or len(name) > MAX_NAME:
        raise RobustMDiffError(f"please give a reviewer name of 1 to {MAX_NAME} characters")
    if not MIN_PIN <= len(pin) <= MAX_PIN:
        raise RobustMDiffError(f"your PIN needs {MIN_PIN} to {MAX_PIN} characters")
    if not reviewer_code():
        raise RobustMDiffError(CLOSED)
    if not _guarded(store, REVIEWER_CODE, client, "", lambda: _same(code, reviewer_code())):
        raise RobustMDiffError("wrong reviewer code")
    if pin_again:
        if pin_again != pin:
            raise RobustMDiffError("the two PINs differ: type the same PIN under PIN and Repeat PIN")
        if store.register(name, hash_pin(pin)):
            store.remember_client(client, name)
            return store.open_session(store.reviewer(name).name)
    known = store.reviewer(name)
    stored = known.pin_hash if known else ""  # empty: an unknown name, or one whose PIN the admin reset
    if not _guarded(store, PIN, client, name, lambda: verify_pin(pin, stored or _no_pin()) and bool(stored)):
        raise RobustMDiffError(TAKEN if pin_again else WRONG)
    return store.open_session(known.name)


def sign_out(store: ReviewStore, session: str) -> None:
    """End every session of this session's reviewer (here and in their other browsers)."""
    if found := store.session(session):
        store.end_sessions(found.reviewer)
