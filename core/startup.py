"""Messages for slow first-use steps (generating the cohort, writing its card, ...): one short line when a
step starts, a reminder every few seconds while it runs and one when it ends, so that `make run` or a
command is never silent for long. Callers print nothing when a step is skipped, so a second run stays quiet.

Lines go to stderr (like tqdm's bars), so that a command's stdout (JSON, tables) stays clean.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

HEARTBEAT_S = 8.0  # below the 10 s of silence issue 15 allows, with room for a busy machine's scheduling


def say(text: str, stream: TextIO | None = None) -> None:
    """One line, flushed at once (make pipes stderr through without a terminal's line buffering)."""
    print(text, file=stream or sys.stderr, flush=True)


@contextmanager
def phase(what: str, about: str = "", enabled: bool = True, every: float = HEARTBEAT_S,
          stream: TextIO | None = None) -> Iterator[None]:
    """Announce `what` ("Writing the dataset card"), with `about` (e.g. "about 20 s") in brackets; while it
    runs, say every `every` seconds that it still does, and at the end how long it took.

    The reminders come from a daemon thread because the step itself (a library call) cannot report.
    """
    if not enabled:
        yield
        return
    out = stream or sys.stderr
    start = time.monotonic()
    say(f"{what}{f' ({about})' if about else ''}…", out)
    doing = what[:1].lower() + what[1:]
    stop = threading.Event()

    def remind() -> None:
        while not stop.wait(every):
            say(f"  … still {doing} ({time.monotonic() - start:.0f} s)", out)

    thread = threading.Thread(target=remind, name="startup-reminder", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    say(f"  done in {time.monotonic() - start:.0f} s", out)
