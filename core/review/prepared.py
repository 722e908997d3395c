"""The explanations reviewers rate, computed once and kept, so that moving through the queue never waits
for the model.

Each (case, model, method) explanation is computed at most once per model checkpoint and code version and
kept in memory and on disk (the data folder's cache, one folder per model, named by that model's
fingerprint and the study's case set). Every reviewer therefore rates the very same artefact, which
inter-rater agreement needs (SHAP samples at random). A background thread prepares what reviewers will
need next (`prefetch`, urgent first) and, only if asked (RMD_REVIEW_WARM=all), everything else (`warm`);
a page that needs an item at once computes it in its own thread unless the worker already has it in hand.

The thread lives only while there is something to prepare: it ends when its queue is empty (a later
prefetch starts a new one), so an idle server does no review work, and `close` drops what is queued
instead of working through it (issue 29: the whole study was prepared in the background whenever the page
was opened, ~35 % of the CPU for as long as that took, and stopping the server waited 30 s for it).

A page waiting for an item the thread has queued in the pool for later moves that job up to its own
urgency (`ModelService.promote`), so no reviewer waits for the pool to fall idle (issue 27: a 0.5 s item
took 13.4 s while another user predicted once a second).

The files hold no pickle (core/review/serialize.py: JSON and arrays, read with allow_pickle=False), since
the data folder may sit on shared storage that others can write: a file there must never run code.
"""

from __future__ import annotations

import atexit
import hashlib
import itertools
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING

from core.paths import ROOT, cache_dir
from core.review import serialize

if TYPE_CHECKING:
    from core.pool_job import Job
    from core.serve import ModelService

log = logging.getLogger(__name__)

Key = tuple[int, str, str, str]  # (cohort row, case id, model, method)
Compute = Callable[[int, str, str], object]  # (row, model, method) -> Explanation
CACHE_VERSION = "3"  # 2: the case set is part of the fingerprint; 3: no pickle (core/review/serialize.py)
URGENT, AHEAD, BACKGROUND = 0, 1, 2
_SOURCES = ("core/explain", "core/inference.py", "core/prediction.py", "core/model")


def fingerprint(checkpoint_meta: dict, manifest_csv: str, case_ids: Iterable[str] = ()) -> str:
    """Changes whenever the model, the cohort, the study's cases or the code that explains could change
    what reviewers are shown (a new case set starts a new folder: nothing prepared for another is reused)."""
    h = hashlib.sha256(CACHE_VERSION.encode())
    for k in ("weights_sha256", "meta_sha256"):
        h.update(str(checkpoint_meta.get(k)).encode())
    h.update(manifest_csv.encode())
    h.update("\0".join(case_ids).encode())
    for src in _SOURCES:
        path = ROOT / src
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            h.update(f.read_bytes())
    return h.hexdigest()[:20]


def warm_mode() -> str:
    """RMD_REVIEW_WARM: "0" only on demand; "1" (default) also each reviewer's next items, in the background;
    "all" also every item of the study once (hours of CPU for SHAP on a large study: a server set up for it)."""
    value = os.environ.get("RMD_REVIEW_WARM", "1").strip().lower()
    return value if value in ("0", "all") else "1"


def warm_enabled() -> bool:
    """Prepare a reviewer's next items in the background (RMD_REVIEW_WARM=0: only on demand)."""
    return warm_mode() != "0"


def warm_all() -> bool:
    """Also prepare every item of the study in the background (RMD_REVIEW_WARM=all)."""
    return warm_mode() == "all"


def default_folder(key: str, root: Path | None = None) -> Path:
    return (root or cache_dir()) / f"review-explanations-{key}"


def _background_policy() -> None:
    """Keep the worker out of the way of people waiting: one torch thread (torch's setting is per thread,
    so pages keep theirs) at a lower CPU priority (Linux nice applies per thread)."""
    from core.pool_threads import one_thread

    one_thread()
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass  # not Linux, or not allowed: run at normal priority


class PreparedExplanations:
    def __init__(self, folders: Mapping[str, Path], compute: Compute, pool: "ModelService | None" = None):
        """`folders`: where each model's explanations are kept (see `fingerprint`, `default_folder`).
        `pool`: where the model work runs (the app's shared pool, core/serve.py, so that review work queues
        with everyone else's instead of adding threads); here, by default."""
        self.folders, self._compute, self._pool = {k: Path(v) for k, v in folders.items()}, compute, pool
        self._futures: dict[Key, Future] = {}
        self._jobs: dict[Key, "Job"] = {}  # items the thread has handed to the pool, while they wait or run
        self._wanted: set[Key] = set()  # items a page waits for: handed to the pool as urgent
        self._lock = threading.Lock()
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()  # FIFO within a priority
        self._worker: threading.Thread | None = None
        self._stopping = False
        self._warmed = False
        self._at_exit = False

    # ---- reading -------------------------------------------------------------------------------------
    def get(self, key: Key):
        """The explanation, waiting for it if the worker is computing it, else computing it here."""
        future, mine = self._claim(key)
        if mine:
            self._produce(key, future, URGENT)
        else:
            job = self._hurry(key, future)
            if job is not None:
                job.result()  # its time limit applies from now (JobTimeout); the value comes from `future`
        return future.result()

    def ready(self, key: Key) -> bool:
        with self._lock:
            future = self._futures.get(key)
        return (future is not None and future.done() and future.exception() is None) or self._path(key).exists()

    # ---- preparing ahead -----------------------------------------------------------------------------
    def prefetch(self, keys: Iterable[Key], priority: int = AHEAD) -> None:
        """Queue these for the background thread (lower priority values first); items already prepared or
        being prepared are not queued, and nothing starts when nothing is left to prepare."""
        if self._stopping:
            return
        queued = 0
        for key in keys:
            with self._lock:
                claimed = key in self._futures
            if not claimed and not self.ready(key):
                self._queue.put((priority, next(self._order), key))
                queued += 1
        if queued:
            self._start()

    def warm(self, keys: Iterable[Key]) -> None:
        """Queue everything once, behind what reviewers are waiting for."""
        if not self._warmed:
            self._warmed = True
            self.prefetch(keys, BACKGROUND)

    def busy(self) -> bool:
        """Whether the background thread is alive (it ends once its queue is empty)."""
        with self._lock:
            return self._worker is not None and self._worker.is_alive()

    def close(self, timeout: float | None = None) -> None:
        """Drop what is queued and stop. The item in hand, if any, is waited for only briefly when it runs
        elsewhere (`pool`: the app's pool, which finishes or cancels it at its own exit); computed in this
        thread it is waited for (torch must not be left mid-work at interpreter exit)."""
        self._stopping = True
        self._drain()
        with self._lock:
            worker = self._worker
        if worker is not None:
            worker.join((1.0 if self._pool is not None else 120.0) if timeout is None else timeout)

    # ---- internals -----------------------------------------------------------------------------------
    def _path(self, key: Key) -> Path:
        _, case_id, model, method = key
        if model not in self.folders:
            raise KeyError(f"no explanation folder for model {model!r}")
        return self.folders[model] / (hashlib.sha256(f"{case_id}\0{method}".encode()).hexdigest()[:24] + ".npz")

    def _claim(self, key: Key) -> tuple[Future, bool]:
        """The future for `key`, and whether the caller is the one to produce it."""
        with self._lock:
            if key in self._futures:
                return self._futures[key], False
            future = self._futures[key] = Future()
            return future, True

    def _hurry(self, key: Key, future: Future) -> "Job | None":
        """A page waits for `key`, which someone else produces: if it waits in the pool at a lower priority,
        it moves up now; if not handed to the pool yet, it goes in as urgent. Returns its pool job, if any."""
        from core.serve import INTERACTIVE

        with self._lock:
            if future.done():
                return None
            self._wanted.add(key)
            job = self._jobs.get(key)
        if job is not None:
            self._pool.promote(job, INTERACTIVE)
        return job

    def _produce(self, key: Key, future: Future, priority: int) -> None:
        try:
            value = self._load(key)
            future.set_result(value if value is not None else self._compute_and_keep(key, priority))
        except BaseException as e:  # noqa: BLE001 - handed to whoever waits; a later get() retries
            with self._lock:
                self._futures.pop(key, None)
            future.set_exception(e)
        finally:
            with self._lock:
                self._wanted.discard(key)

    def _load(self, key: Key):
        path = self._path(key)
        try:
            return serialize.read(path)
        except FileNotFoundError:
            return None
        except Exception:  # noqa: BLE001 - a torn, stale or foreign file is recomputed, never trusted
            log.warning("review explanation cache file %s unreadable; recomputing", path.name)
            return None

    def _in_pool(self, key: Key, priority: int):
        """The explanation computed in the shared pool, at the urgency of whoever waits for it."""
        from core.serve import AHEAD as SOON, BACKGROUND as SOME_DAY, INTERACTIVE

        row, _, model, method = key
        levels = {URGENT: INTERACTIVE, AHEAD: SOON, BACKGROUND: SOME_DAY}
        with self._lock:
            urgency = URGENT if key in self._wanted else priority
        job = self._pool.submit(self._compute, row, model, method, priority=levels[urgency],
                                label="Preparing a review item", kind="review", key=("review", str(self._path(key))))
        with self._lock:  # a page that marked the key wanted before `_hurry` could see the job: moved up here
            self._jobs[key] = job
            late = key in self._wanted and urgency != URGENT
        if late:
            self._pool.promote(job, INTERACTIVE)
        try:
            return job.result()
        finally:
            with self._lock:
                self._jobs.pop(key, None)

    def _compute_and_keep(self, key: Key, priority: int):
        row, _, model, method = key
        if self._pool is not None:
            value = self._in_pool(key, priority)
        else:
            from core.pool_threads import single_threaded

            with single_threaded():  # one torch thread, like the app's workers (core/serve.py: why)
                value = self._compute(row, model, method)
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "wb") as f:
            serialize.write(value, f)
        os.replace(tmp, path)  # atomic: readers in other processes never see half a file
        return value

    def _drain(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def _start(self) -> None:
        """A worker for the queue, unless one is running (it ends when the queue is empty)."""
        with self._lock:
            if self._stopping or (self._worker is not None and self._worker.is_alive()):
                return
            self._worker = threading.Thread(target=self._work, name="review-prepare", daemon=True)
            self._worker.start()
            if not self._at_exit:
                self._at_exit = True
                atexit.register(self.close)

    def _next(self) -> tuple[int, Key] | None:
        """The next queued item, or None when the queue is empty (the worker then ends). Emptiness is
        decided under the lock that `_start` takes, so an item queued meanwhile starts a new worker."""
        with self._lock:
            try:
                priority, _, key = self._queue.get_nowait()
            except queue.Empty:
                self._worker = None
                return None
            return priority, key

    def _work(self) -> None:
        _background_policy()
        while not self._stopping:
            item = self._next()
            if item is None:
                return
            priority, key = item
            future, mine = self._claim(key)
            if mine:
                self._produce(key, future, priority)
                if future.exception() is not None:
                    log.warning("could not prepare review item %s/%s/%s: %s", key[1], key[2], key[3], future.exception())


def study_explanations(lineup, cohort, loaded: dict | None = None, pool: "ModelService | None" = None,
                       case_ids: Iterable[str] | None = None, root: Path | None = None) -> PreparedExplanations:
    """The review study's explanations: every model of `lineup` (core/review/models.py) explaining cases
    of `cohort` (a Dataset), kept per model and case-set fingerprint. `loaded`: predictors already in
    memory by model name (the others load on first use); `pool`: where the model work runs (see
    PreparedExplanations); `case_ids`: the study's cases (by default core.demo.study_cases); `root`: the folder
    that holds the kept explanations (by default the data folder's cache; a load test starts from an empty one)."""
    from core.explain.explanation import explain_case
    from core.review.models import Predictors

    if case_ids is None:
        from core.demo import study_cases

        case_ids = [c.case_id for c in study_cases(cohort)]
    case_ids = list(case_ids)
    manifest = cohort.manifest.to_csv(index=False)
    folders = {m.name: default_folder(fingerprint(m.meta, manifest, case_ids), root) for m in lineup.models}
    predictors = Predictors(lineup.models, loaded)
    # runs in the background thread too: only plain core calls, no Streamlit
    return PreparedExplanations(folders, lambda row, model, method: explain_case(predictors.get(model), cohort.load(row),
                                                                                 method=method), pool=pool)
