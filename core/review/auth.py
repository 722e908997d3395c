"""Who may do what in the review study.

- Reviewers give the shared study code (RMD_REVIEWER_CODE), their name and a personal PIN. The first
  sign-in under a name sets the PIN (salted scrypt hash in the store); later sign-ins must give it, so
  typing someone else's name cannot reach, let alone overwrite, their ratings.
- A signed-in reviewer gets a token (HMAC-SHA256 with a random secret kept in the review database,
  mixed with the reviewer code) to keep in the page URL, so a reload does not sign them out. Changing
  the reviewer code, or signing out, invalidates every earlier token.
- Results and export need a separate study-admin code (RMD_ADMIN_CODE): reviewers who see per-method
  results mid-study could tell which method made the explanations they rate (blinding).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time

from core.errors import RobustMDiffError
from core.review.store import ReviewStore, reviewer_code

MIN_PIN, MAX_PIN = 4, 128
SCRYPT = {"n": 2**14, "r": 8, "p": 1}  # ~16 MiB, ~50 ms: slow for guessing, quick for one sign-in
TOKEN_DAYS = 30


def admin_code() -> str:
    return os.environ.get("RMD_ADMIN_CODE", "")


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def check_reviewer_code(given: str) -> None:
    expected = reviewer_code()
    if not expected:
        raise RobustMDiffError("reviewing is closed: no reviewer code is configured (set RMD_REVIEWER_CODE)")
    if not _same(given, expected):
        raise RobustMDiffError("wrong reviewer code")


def admin_enabled() -> bool:
    return bool(admin_code())


def check_admin_code(given: str) -> None:
    expected = admin_code()
    if not expected:
        raise RobustMDiffError("results and export are switched off: set RMD_ADMIN_CODE to a study-admin code "
                               "and restart the app")
    if _same(expected, reviewer_code()):
        raise RobustMDiffError("RMD_ADMIN_CODE must differ from the reviewer code (RMD_REVIEWER_CODE), or any "
                               "reviewer could open the results mid-study")
    if not _same(given, expected):
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


def _check_pin_shape(pin: str) -> None:
    if not MIN_PIN <= len(pin) <= MAX_PIN:
        raise RobustMDiffError(f"your PIN needs {MIN_PIN} to {MAX_PIN} characters")


def sign_in(store: ReviewStore, name: str, code: str, pin: str, pin_again: str = "") -> str:
    """The reviewer's registered name, after checking the study code and their PIN.

    A new name is registered with its PIN; `pin_again` must repeat it, so a typo cannot lock the reviewer
    out. A known name needs its PIN; a wrong one is refused and leaves everything as it was.
    """
    check_reviewer_code(code)
    name = name.strip()
    if not name:
        raise RobustMDiffError("please give a reviewer name")
    _check_pin_shape(pin)
    known = store.reviewer(name)
    if known is None or not known.pin_hash:  # a new name, or one whose PIN the admin reset
        if pin_again != pin:
            raise RobustMDiffError(f"'{name}' has no PIN yet: choose one and type it again in 'Repeat PIN' to "
                                   "confirm it (you will need it to come back)")
        registered = store.register(name, hash_pin(pin))
        known = store.reviewer(name)  # when not registered: someone claimed it a moment ago, their PIN decides
        if registered:
            return known.name
    if store.locked(known):
        raise RobustMDiffError(f"too many wrong PINs for '{known.name}': sign-in is paused for a few minutes")
    ok = verify_pin(pin, known.pin_hash)
    store.record_pin_attempt(known.name, ok)
    if not ok:
        raise RobustMDiffError(f"wrong PIN for reviewer '{known.name}'. If that is not you, choose another name; "
                               "if it is and you forgot your PIN, ask the study admin")
    return known.name


# ---- tokens that keep a reviewer signed in across reloads ----------------------------------------------
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(store: ReviewStore, payload: str) -> str:
    # the reviewer code is mixed in so that changing it (closing the study) invalidates every token
    key = hmac.new(store.secret(), reviewer_code().encode(), hashlib.sha256).digest()
    return _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())


def issue_token(store: ReviewStore, name: str) -> str:
    known = store.reviewer(name)
    if known is None or not known.pin_hash:
        raise RobustMDiffError(f"'{name}' is not a registered reviewer")
    payload = f"{_b64(known.name.encode())}.{known.generation}.{int(time.time())}"
    return f"{payload}.{_signature(store, payload)}"


def read_token(store: ReviewStore, token: str) -> str | None:
    """The reviewer a token signs in, or None when it is forged, expired, signed out or the study closed."""
    if not reviewer_code() or not token or len(token) > 1000:
        return None
    try:
        name_b64, generation, issued, signature = token.split(".")
        if not hmac.compare_digest(signature.encode(), _signature(store, f"{name_b64}.{generation}.{issued}").encode()):
            return None
        name = _unb64(name_b64).decode()
        fresh = time.time() - int(issued) < TOKEN_DAYS * 86400
    except (ValueError, UnicodeDecodeError):
        return None
    known = store.reviewer(name)
    if not fresh or known is None or not known.pin_hash or str(known.generation) != generation:
        return None
    return known.name


def sign_out(store: ReviewStore, name: str) -> None:
    """End every sign-in of this reviewer (all their tokens stop working)."""
    store.sign_out_everywhere(name)
