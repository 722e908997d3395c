"""How many sign-in guesses get evaluated: the policy (numbers, waits, messages). The store
(core/review/store.py) decides and records each attempt in one transaction before the code or PIN is
evaluated, so guesses sent at the same moment cannot slip past these limits.

- Per client (the connection's address), for each of the reviewer code, the study-admin code and PINs:
  the first FREE_FAILURES wrong answers in a WINDOW are evaluated at once; after them one guess after
  BACKOFF_START seconds, the wait doubling with each further failure up to MAX_BACKOFF.
- PINs, per name and client: at most MAX_PIN_FAILURES failed (or still pending) evaluations in a WINDOW.
  The lock holds only that client, so someone who keeps failing cannot keep the reviewer out: from
  another connection the reviewer still signs in.
- PINs, per name across clients: at most NAME_FAILURES in a WINDOW from clients that never signed in as
  that name (a guess spread over many addresses); clients that did (within KNOWN_FOR) keep their access.
A success clears the count of its scope. Unknown names are counted like registered ones, so the refusals
tell nobody which names exist.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from core.errors import RobustMDiffError

REVIEWER_CODE, ADMIN_CODE, PIN = "reviewer_code", "admin_code", "pin"
WINDOW = 15 * 60.0
FREE_FAILURES = 10
BACKOFF_START, MAX_BACKOFF = 1.0, 60.0
MAX_PIN_FAILURES = 5
NAME_FAILURES = 20
KNOWN_FOR = 30 * 86400.0

WHAT = {REVIEWER_CODE: "wrong reviewer codes", ADMIN_CODE: "wrong study-admin codes", PIN: "failed sign-ins"}


class Throttled(RobustMDiffError):
    """A guess refused before it was evaluated; `wait` says for how many seconds."""

    def __init__(self, message: str, wait: float):
        super().__init__(message)
        self.wait = wait


@dataclass(frozen=True)
class History:
    """Failed or pending evaluations in the window since the scope's last success (epoch seconds)."""

    client_failures: int                  # this kind from this client
    client_last: float | None             # the newest of them
    pair: tuple[float, ...] = ()          # PINs for this name from this client, newest first (at most MAX_PIN_FAILURES)
    name: tuple[float, ...] = ()          # PINs for this name from every client, newest first (at most NAME_FAILURES)
    known_client: bool = False            # this client signed in as this name within KNOWN_FOR


def _in(seconds: float) -> str:
    if seconds < 90:
        return f"{math.ceil(seconds)} s"
    return f"{math.ceil(seconds / 60)} min"


def refusal(kind: str, h: History, now: float) -> Throttled | None:
    """Why this guess must wait, or None when it may be evaluated now."""
    if h.client_failures >= FREE_FAILURES and h.client_last is not None:
        delay = min(BACKOFF_START * 2 ** (h.client_failures - FREE_FAILURES), MAX_BACKOFF)
        wait = h.client_last + delay - now
        if wait > 0:
            return Throttled(f"Too many {WHAT[kind]} from your connection: try again in {_in(wait)}.", wait)
    if kind != PIN:
        return None
    if len(h.pair) >= MAX_PIN_FAILURES:
        wait = h.pair[MAX_PIN_FAILURES - 1] + WINDOW - now
        if wait > 0:
            return Throttled(f"Too many failed sign-ins for this name from your connection: sign-in is paused "
                             f"here; try again in {_in(wait)}, or ask the study admin.", wait)
    if not h.known_client and len(h.name) >= NAME_FAILURES:
        wait = h.name[NAME_FAILURES - 1] + WINDOW - now
        if wait > 0:
            return Throttled(f"Too many failed sign-ins for this name from new connections: sign-in is paused "
                             f"for them; try again in {_in(wait)}, or from a device you signed in from before.",
                             wait)
    return None
