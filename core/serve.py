"""Model work for the app: one small pool of workers shared by every browser session.

Why: torch's intra-op threads oversubscribe a small machine. Two sessions explaining at once with torch's
default threads (one per core each) ran 15× slower than one thread each (issue 15: 49 s against 3.3 s on
2 cores). So the server runs at most `workers` model jobs at a time (one per core by default,
RMD_WORKERS to change it), each with one torch thread (torch's setting is per thread, so every worker
sets its own: core/pool_threads.py), and everything else waits in one priority queue: explanations
before work needed soon before background work (the warm-up). Predictions (a tenth of a second each)
have a lane and a worker of their own, so that switching a modality never waits behind someone's
explanation; that worker adds at most one short thread to the cores. A page shows how many jobs are
ahead of its own while it waits.

No one is stranded (issue 27):
- a job someone waits for inherits that urgency: asking for work already queued under the same `key`
  joins that job and moves it up to the asker's priority (`promote`), so a reviewer waiting on an item
  the review-preparation thread queued for some day is not kept waiting until the pool is idle; and work
  nobody waits for yet never holds the last free worker, so such a job finds one;
- each browser session has at most MAX_QUEUED_PER_SESSION jobs waiting; its newer prediction or
  explanation replaces its older one still waiting; its waiting jobs are dropped when it ends
  (`cancel_session`, or found gone when a worker reaches them), and a dropped job never starts;
- every kind of job has a time limit (TIMEOUTS) from the moment someone waits for it: past it the waiter
  gets a clear JobTimeout (a running torch call cannot be interrupted: it finishes, unheard);
- a lane holds at most MAX_QUEUED waiting jobs: past it a request is refused with ServerBusy;
- a job that fails is logged here with its traceback, by kind and label only (no case contents).

Jobs report stages as they go (`Job.stages`, core/pool_job.py), so a page can draw an explanation
progressively, and the last predictions are kept (`predict` is cached per case and availability), so
moving a display control never asks the model again.
"""

from __future__ import annotations

import atexit
import hashlib
import itertools
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import InvalidStateError

from core.data.dataset import CaseInputs
from core.errors import RobustMDiffError
from core.inference import Predictor
from core.pool_job import Job
from core.pool_threads import default_workers, import_model_stack, one_thread
from core.prediction import Prediction

log = logging.getLogger(__name__)

# predictions; explanations someone waits for; work needed soon (a reviewer's next items); work for some
# day (the warm-up, preparing a whole review study), which starts only on an idle pool: a long job
# (a SHAP explanation can take a minute) must not hold a worker while people are clicking
URGENT, INTERACTIVE, AHEAD, BACKGROUND = 0, 1, 2, 3
IDLE_S = 3.0  # no one has asked the pool for anything this long: background work may start
PREDICTION_CACHE = 256  # (case, availability) pairs kept: a few per session for a handful of sessions
EXPLANATION_CACHE = 64  # explanations are seeded, so another session asking the same gets the same one
MAX_QUEUED = 64  # jobs waiting in one lane; past it the server is busy (minutes of work on a small machine)
MAX_QUEUED_PER_SESSION = 4  # one session's waiting jobs: a prediction, an explanation, a review item or two
# seconds from when someone waits for a job (submitted or promoted above BACKGROUND) to its answer: a
# prediction takes a tenth of a second, an explanation up to a minute alone (SHAP on a 2-core CPU), so
# these are far past what a loaded server needs, and a waiter past them is told instead of left waiting
TIMEOUTS = {"predict": 120.0, "explain": 600.0, "review": 600.0}
DEFAULT_TIMEOUT = 600.0
SUPERSEDED = ("predict", "explain")  # a session's newer request of these kinds replaces its older waiting one


class ServerBusy(RobustMDiffError):
    """Too much work is waiting (for the server, or for this session): try again later."""


class JobTimeout(RobustMDiffError):
    """No answer within the job kind's time limit."""


def upload_key(parts: Iterable[tuple[str, str, bytes]]) -> str:
    """The cache key of an uploaded case from its parts, each (modality, what it is — e.g. "scan file
    x.dcm", "pasted note" —, its bytes). Every field is length-prefixed, so no two different cases share a
    key by their bytes running into each other (a note ending where the labs begin); the key is shared
    across sessions (the same inputs get the same kept prediction), so it must name the inputs exactly."""
    h = hashlib.sha256(b"robustmdiff-upload/2")
    for modality, what, data in parts:
        for value in (modality.encode(), what.encode(), data):
            h.update(len(value).to_bytes(8, "big"))
            h.update(value)
    return "upload-" + h.hexdigest()


class _Kept:
    """The last `size` results by key (least recently used dropped), safe across threads."""

    def __init__(self, size: int):
        self.size, self._items, self._lock = size, OrderedDict(), threading.Lock()

    def get(self, key: tuple):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
            return self._items.get(key)

    def put(self, key: tuple, value) -> None:
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class ModelService:
    """The pool, the queue and the prediction cache around one `Predictor`.

    `session_of()`: the browser session asking, read in the asking thread (None outside a session); with
    `session_alive(session)`, a job whose every session has ended is dropped instead of started. The
    pages pass Streamlit's (core never imports it). `timeouts`: seconds per job kind, over TIMEOUTS."""

    def __init__(self, predictor: Predictor | None, workers: int | None = None,
                 session_of: Callable[[], Hashable | None] | None = None,
                 session_alive: Callable[[Hashable], bool] | None = None,
                 timeouts: dict[str, float] | None = None, max_queued: int = MAX_QUEUED,
                 max_queued_per_session: int = MAX_QUEUED_PER_SESSION):
        if predictor is not None:  # (None: a pool for other work alone, e.g. in tests)
            import_model_stack()
        self.predictor = predictor
        self.workers = workers or default_workers()
        self.timeouts = TIMEOUTS | (timeouts or {})
        self.max_queued, self.max_queued_per_session = max_queued, max_queued_per_session
        self._session_of, self._session_alive = session_of, session_alive
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._urgent: queue.PriorityQueue = queue.PriorityQueue()  # predictions: their own lane and worker
        self._order = itertools.count()
        self._waiting: dict[int, Job] = {}  # current queue place → job (an older place of a promoted job is stale)
        self._keyed: dict[Hashable, Job] = {}  # key → the job waiting or running for it
        self._lock = threading.Lock()
        self._predictions = _Kept(PREDICTION_CACHE)
        self._explanations = _Kept(EXPLANATION_CACHE)
        self._last_asked = float("-inf")  # when someone last submitted or finished non-background work
        self._running_for_people = 0
        self._running_unwaited = 0  # jobs running that nobody waits for yet (AHEAD, BACKGROUND)
        self._threads = [threading.Thread(target=self._work, args=(self._queue,), name=f"rmd-worker-{i}", daemon=True)
                         for i in range(self.workers)]
        self._threads.append(threading.Thread(target=self._work, args=(self._urgent,), name="rmd-predict", daemon=True))
        for t in self._threads:
            t.start()
        # a worker still inside torch when the interpreter exits aborts the process ("terminate called
        # without an active exception"): at exit, drop what waits and let the running jobs finish
        atexit.register(self.close)

    # ---- the queue ---------------------------------------------------------------------------------
    def submit(self, fn: Callable[..., object], *args, priority: int = INTERACTIVE, label: str = "working",
               kind: str = "work", key: Hashable | None = None, pass_job: bool = False, **kwargs) -> Job:
        """Queue `fn(*args, **kwargs)` (with `job=` the Job itself when `pass_job`, to report stages). With a
        `key` that a job waiting or running already has, that job is returned instead, moved up to
        `priority` if that is more urgent. Raises ServerBusy when too much is waiting."""
        session = self._session_of() if self._session_of else None
        with self._lock:
            same = self._keyed.get(key) if key is not None else None
            if same is not None and not same.future.done():
                same.owners.add(session)
                self._promote_locked(same, priority)
                return same
            self._make_room_locked(session, kind, priority == URGENT)
            job = Job(label, priority, kind=kind, key=key, owners={session}, _service=self,
                      _predict_lane=priority == URGENT)
            if pass_job:
                kwargs["job"] = job
            job._call = (fn, args, kwargs)
            if priority < BACKGROUND:
                self._last_asked = time.monotonic()
                job.deadline = time.monotonic() + self.timeout(kind)
            self._enqueue_locked(job, priority)
            if key is not None:
                self._keyed[key] = job
        return job

    def promote(self, job: Job, priority: int) -> None:
        """Someone (this session, if any) now waits for `job` at `priority`: if it still waits at a lower one,
        it moves up."""
        session = self._session_of() if self._session_of else None
        with self._lock:
            job.owners.add(session)
            self._promote_locked(job, priority)

    def cancel_session(self, session: Hashable) -> int:
        """The session's waiting jobs are moot (it ended, or asked for something else): each is dropped unless
        another session or the server also waits for it. Returns how many were dropped."""
        if session is None:  # outside a browser session: nothing of anyone's to drop
            return 0
        with self._lock:
            return sum(self._drop_owner_locked(job, session) for job in list(self._waiting.values())
                       if session in job.owners)

    def waiting(self) -> list[Job]:
        """The jobs waiting for a worker, first to start first (within each lane)."""
        with self._lock:
            return [job for _, job in sorted(self._waiting.items(), key=lambda item: (item[1].priority, item[0]))]

    def timeout(self, kind: str) -> float:
        return self.timeouts.get(kind, DEFAULT_TIMEOUT)

    def ahead_of(self, job: Job) -> int:
        with self._lock:
            if self._waiting.get(job._order) is not job:
                return 0
            return sum(1 for o, j in self._waiting.items()
                       if j._predict_lane == job._predict_lane and (j.priority, o) < (job.priority, job._order))

    def idle(self) -> bool:
        """Nobody's work runs and nobody asked for any for IDLE_S seconds."""
        with self._lock:
            return self._idle_locked()

    def _idle_locked(self) -> bool:
        return self._running_for_people == 0 and time.monotonic() - self._last_asked >= IDLE_S

    def _may_start_locked(self, priority: int) -> bool:
        """Work nobody waits for yet (AHEAD, BACKGROUND) never takes the last free worker, so that a job someone
        comes to wait for (a reviewer reaching an item still unprepared) does not queue behind minutes of
        preparation; background work, moreover, only on an idle pool."""
        if priority < AHEAD:
            return True
        spare = self.workers < 2 or self._running_unwaited < self.workers - 1
        return spare and (priority < BACKGROUND or self._idle_locked())

    def _enqueue_locked(self, job: Job, priority: int) -> None:
        job.priority, job._order = priority, next(self._order)
        self._waiting[job._order] = job
        (self._urgent if job._predict_lane else self._queue).put((priority, job._order, job))

    def _promote_locked(self, job: Job, priority: int) -> None:
        if not job._predict_lane:
            priority = max(priority, INTERACTIVE)  # the prediction lane is for predictions
        if priority < BACKGROUND:
            self._last_asked = time.monotonic()
            if job.deadline is None and not job.future.done():
                job.deadline = time.monotonic() + self.timeout(job.kind)  # someone waits for it from now
        if priority >= job.priority or self._waiting.get(job._order) is not job:
            return  # as urgent already, or no longer waiting
        del self._waiting[job._order]
        self._enqueue_locked(job, priority)  # its old place in the queue is skipped as stale
        log.info("%s job %r moved up to priority %d: someone waits for it", job.kind, job.label, priority)

    def _make_room_locked(self, session: Hashable | None, kind: str, predict_lane: bool) -> None:
        if session is not None:
            if kind in SUPERSEDED:
                for old in [j for j in self._waiting.values() if session in j.owners and j.kind == kind]:
                    self._drop_owner_locked(old, session)
            mine = sum(1 for j in self._waiting.values() if session in j.owners)
            if mine >= self.max_queued_per_session:
                raise ServerBusy(f"You already have {mine} requests waiting for the model: please wait for them "
                                 "to finish, then try again.")
        waiting = sum(1 for j in self._waiting.values() if j._predict_lane == predict_lane)
        if waiting >= self.max_queued:
            log.warning("refused a %s job: %d jobs already waiting", kind, waiting)
            raise ServerBusy(f"The server is busy ({waiting} requests are waiting for the model): please try again "
                             "in a minute.")

    def _drop_owner_locked(self, job: Job, session: Hashable | None) -> bool:
        """`session` no longer waits for `job`; a waiting job no one else waits for is cancelled."""
        job.owners.discard(session)
        if job.owners or self._waiting.get(job._order) is not job:
            return False
        del self._waiting[job._order]
        self._forget_locked(job)
        return job.future.cancel()

    def _forget_locked(self, job: Job) -> None:
        if job.key is not None and self._keyed.get(job.key) is job:
            del self._keyed[job.key]

    def _expire(self, job: Job) -> None:
        """Answer a late job with JobTimeout (called by whoever waits; the work, if running, goes on unheard)."""
        with self._lock:
            if job.future.done() or job.deadline is None or time.monotonic() < job.deadline:
                return
            if self._waiting.get(job._order) is job:
                del self._waiting[job._order]
            self._forget_locked(job)
            limit = self.timeout(job.kind)
            try:
                job.future.set_exception(JobTimeout(f"No answer from the model within {limit:g} s "
                                                    f"({job.label.lower()}): the server is busy. Please try again "
                                                    "in a minute."))
            except InvalidStateError:  # answered meanwhile
                return
        log.warning("%s job %r timed out after %g s (%s)", job.kind, job.label, limit,
                    "running" if job.started is not None else "waiting")

    def _start_locked(self, job: Job) -> bool:
        """Whether a worker that took `job` from the queue should run it (under the lock)."""
        del self._waiting[job._order]
        if job.future.done():
            self._forget_locked(job)
            return False
        alive = self._session_alive
        if alive is not None and None not in job.owners and not any(alive(s) for s in job.owners):
            self._forget_locked(job)
            job.future.cancel()
            log.info("dropped a waiting %s job: every session that asked for it has ended", job.kind)
            return False
        if job.deadline is not None and time.monotonic() >= job.deadline:
            return False  # its waiter is told (Job._expire_if_late); it never starts
        if not job.future.set_running_or_notify_cancel():
            return False
        job.started = time.perf_counter()
        self._running_for_people += job.priority < BACKGROUND
        self._running_unwaited += job.priority >= AHEAD
        return True

    def _work(self, lane: queue.PriorityQueue) -> None:
        one_thread()
        while True:
            priority, order, job = lane.get()
            if job is None:
                return
            with self._lock:
                if self._waiting.get(order) is not job:
                    continue  # stale: promoted (queued again), dropped or timed out
                later = not self._may_start_locked(priority)
                start = not later and self._start_locked(job)
            if later:
                lane.put((priority, order, job))  # back in line; anything more urgent is taken first
                time.sleep(0.2)
                continue
            if not start:
                job._expire_if_late()
                continue
            self._run(job)

    def _run(self, job: Job) -> None:
        fn, args, kwargs = job._call
        job._call = None
        people, unwaited = job.priority < BACKGROUND, job.priority >= AHEAD  # as counted at its start
        try:
            result = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - logged here, handed to whoever waits on the job
            job.finished = time.perf_counter()  # before the future: a waiter reads it as soon as it is done
            log.error("%s job %r failed after %.1f s", job.kind, job.label, job.finished - job.started, exc_info=e)
            self._settle(job, error=e)
        else:
            job.finished = time.perf_counter()
            self._settle(job, result)
        finally:
            with self._lock:
                self._forget_locked(job)
                self._running_for_people -= people
                self._running_unwaited -= unwaited
                if people:
                    self._last_asked = time.monotonic()

    @staticmethod
    def _settle(job: Job, result: object = None, error: BaseException | None = None) -> None:
        try:
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)
        except InvalidStateError:  # answered with JobTimeout while it ran: the result comes too late
            log.info("%s job %r finished after its time limit (%.0f s)", job.kind, job.label,
                     job.finished - job.submitted)

    def close(self, timeout: float = 120.0) -> None:
        """Cancel the jobs still waiting, let the running ones finish, stop the workers."""
        with self._lock:
            waiting, self._waiting = list(self._waiting.values()), {}
            self._keyed.clear()
        for job in waiting:
            job.future.cancel()
        for i in range(self.workers):
            self._queue.put((99, -1 - i, None))
        self._urgent.put((99, -1, None))
        for t in self._threads:
            t.join(timeout=timeout)

    # ---- what the pages ask for ------------------------------------------------------------------------
    def predict_job(self, case: CaseInputs, case_key: str, absent: Iterable[str] = (),
                    allow_domain_mismatch: bool = False) -> Job:
        """A prediction (answered from the cache when this case and availability were predicted before)."""
        key = (case_key, tuple(sorted(absent)), allow_domain_mismatch)
        hit = self._predictions.get(key)
        if hit is not None:
            return Job.answered("Predicting", URGENT, hit)

        def run() -> Prediction:
            pred = self.predictor.predict(case, absent=list(key[1]), allow_domain_mismatch=allow_domain_mismatch)
            self._predictions.put(key, pred)
            return pred

        return self.submit(run, priority=URGENT, label="Predicting", kind="predict", key=("predict", *key))

    def explain_job(self, case: CaseInputs, case_key: str, absent: Iterable[str] = (),
                    method: str = "integrated_gradients", allow_domain_mismatch: bool = False,
                    priority: int = INTERACTIVE) -> Job:
        """An explanation reported in stages: the prediction and modality contributions first, then labs,
        image and note (see `explain_case`); `Job.partial` is the explanation so far. Explanations are
        seeded, so one asked for before (by any session) is answered from the cache."""
        from core.explain.explanation import explain_case

        key = (case_key, tuple(sorted(absent)), method, allow_domain_mismatch)
        hit = self._explanations.get(key)
        if hit is not None:
            return Job.answered("Explaining", priority, hit, ["contributions", *hit.image, *hit.labs, *hit.note])

        def run(job: Job):
            exp = explain_case(self.predictor, case, list(key[1]), method, allow_domain_mismatch=allow_domain_mismatch,
                               on_stage=job.report)
            self._explanations.put(key, exp)
            return exp

        return self.submit(run, priority=priority, label="Explaining", kind="explain", key=("explain", *key),
                           pass_job=True)

    def forget_explanations(self) -> None:
        """Drop the kept explanations (to time one again, or after the model changed)."""
        self._explanations.clear()

    # ---- warm-up -------------------------------------------------------------------------------------
    def warm_up(self, case: CaseInputs) -> Job:
        """In the background: one prediction and one explanation of `case`, so that imports, SHAP's
        compilation and torch's first-call costs are paid before the first user asks."""
        from core.explain.explanation import explain_case

        def run():
            t0 = time.perf_counter()
            self.predictor.predict(case)
            explain_case(self.predictor, case, [], "integrated_gradients")
            log.info("model warmed up in %.1f s", time.perf_counter() - t0)

        return self.submit(run, priority=BACKGROUND, label="Warming up", kind="warm-up")
