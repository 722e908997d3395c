"""Model work for the app: one small pool of workers shared by every browser session.

Why: torch's intra-op threads oversubscribe a small machine. Two sessions explaining at once with torch's
default threads (one per core each) ran 15× slower than one thread each (issue 15: 49 s against 3.3 s on
2 cores). So the server runs at most `workers` model jobs at a time (one per core by default,
RMD_WORKERS to change it), each with one torch thread (torch's setting is per thread, so every worker
sets its own), and everything else waits in one priority queue: explanations before work needed soon
before background work (the warm-up). Predictions (a tenth of a second each) have a lane and a worker
of their own, so that switching a modality never waits behind someone's explanation; that worker adds
at most one short thread to the cores. A page shows how many jobs are ahead of its own while it waits.

Jobs report stages as they go (`Job.stages`), so a page can draw an explanation progressively, and the
last predictions are kept (`predict` is cached per case and availability), so moving a display control
never asks the model again.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

from core.data.dataset import CaseInputs
from core.inference import Prediction, Predictor

log = logging.getLogger(__name__)

# predictions; explanations someone waits for; work needed soon (a reviewer's next items); work for some
# day (the warm-up, preparing a whole review study), which starts only on an idle pool: a long job
# (a SHAP explanation can take a minute) must not hold a worker while people are clicking
URGENT, INTERACTIVE, AHEAD, BACKGROUND = 0, 1, 2, 3
IDLE_S = 3.0  # no one has asked the pool for anything this long: background work may start
PREDICTION_CACHE = 256  # (case, availability) pairs kept: a few per session for a handful of sessions
EXPLANATION_CACHE = 64  # explanations are seeded, so another session asking the same gets the same one


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """RMD_WORKERS, else one worker per core (at most 4: beyond that requests are rarely concurrent)."""
    env = os.environ.get("RMD_WORKERS", "").strip()
    if env:
        return max(1, int(env))
    return max(1, min(4, available_cores()))


def warm_up_enabled() -> bool:
    """Warm the model up in the background when the server starts (RMD_WARM_UP=0: not, e.g. in tests)."""
    return os.environ.get("RMD_WARM_UP", "1") != "0"


def import_model_stack() -> None:
    """Import what model work imports lazily, in this thread, before any worker starts: transformers'
    lazy modules are not safe to import from two threads at once (a worker's first prediction and the
    warm-up failed with "cannot import name 'AutoModel'")."""
    from transformers import AutoModel, AutoTokenizer  # noqa: F401

    import core.explain.explanation  # noqa: F401 - captum, shap and the explainers


def one_thread() -> None:
    """Run this thread's torch work on one intra-op thread (the setting is per thread)."""
    import torch

    torch.set_num_threads(1)


@contextmanager
def single_threaded():
    """One torch thread for the work inside, then this thread's own setting again."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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


@dataclass
class Job:
    """A queued piece of model work. `stages` grows as the work reports progress (read it from any
    thread: it is only appended to), `partial` is what the work has produced so far (if it says)."""
    label: str
    priority: int
    future: Future = field(default_factory=Future)
    stages: list[str] = field(default_factory=list)
    stage_times: list[float] = field(default_factory=list)  # perf_counter when each stage was reported
    partial: object = None
    submitted: float = field(default_factory=time.perf_counter)
    started: float | None = None
    finished: float | None = None
    kept: bool = False  # answered from what was computed before (its timings are those of the first time)
    _service: "ModelService | None" = field(default=None, repr=False)

    def done(self) -> bool:
        return self.future.done()

    def result(self, timeout: float | None = None):
        return self.future.result(timeout)

    def ahead(self) -> int:
        """Jobs that will start before this one (0 once it runs)."""
        if self.started is not None or self._service is None:
            return 0
        return self._service.ahead_of(self)

    @classmethod
    def answered(cls, label: str, priority: int, result: object, stages: Iterable[str] = ()) -> "Job":
        """A job whose result was already kept: done at once, with the stages it had."""
        job = cls(label, priority, kept=True)
        for stage in stages:
            job.report(stage, result)
        job.started = job.finished = job.submitted
        job.future.set_result(result)
        return job

    def report(self, stage: str, partial: object = None) -> None:
        if partial is not None:
            self.partial = partial
        self.stage_times.append(time.perf_counter())
        self.stages.append(stage)

    def waited(self) -> float:
        """Seconds spent in the queue before a worker took it (so far, if still waiting)."""
        return (self.started or time.perf_counter()) - self.submitted

    def status(self) -> str:
        """One line for the page: where the job is."""
        n = self.ahead()
        if self.started is None:
            return (f"Waiting for the model: {n} request{'s' if n != 1 else ''} from other users ahead of yours "
                    f"({self.waited():.0f} s so far)") if n else "Starting…"
        return f"{self.label}: {self.stages[-1] if self.stages else 'working'}…"


class ModelService:
    """The pool, the queue and the prediction cache around one `Predictor`."""

    def __init__(self, predictor: Predictor, workers: int | None = None):
        import_model_stack()
        self.predictor = predictor
        self.workers = workers or default_workers()
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._urgent: queue.PriorityQueue = queue.PriorityQueue()  # predictions: their own lane and worker
        self._order = itertools.count()
        self._waiting: dict[int, Job] = {}  # order → job, for queue positions
        self._lock = threading.Lock()
        self._predictions = _Kept(PREDICTION_CACHE)
        self._explanations = _Kept(EXPLANATION_CACHE)
        self._last_asked = float("-inf")  # when someone last submitted or finished non-background work
        self._running_for_people = 0
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
               pass_job: bool = False, **kwargs) -> Job:
        """Queue `fn(*args, **kwargs)` (with `job=` the Job itself when `pass_job`, to report stages)."""
        job = Job(label, priority, _service=self)
        if pass_job:
            kwargs["job"] = job
        order = next(self._order)
        with self._lock:
            self._waiting[order] = job
            if priority < BACKGROUND:
                self._last_asked = time.monotonic()
        (self._urgent if priority == URGENT else self._queue).put((priority, order, job, fn, args, kwargs))
        return job

    def ahead_of(self, job: Job) -> int:
        with self._lock:
            mine = next((o for o, j in self._waiting.items() if j is job), None)
            if mine is None:
                return 0
            lane = job.priority == URGENT
            return sum(1 for o, j in self._waiting.items()
                       if (j.priority == URGENT) == lane and (j.priority, o) < (job.priority, mine))

    def idle(self) -> bool:
        """Nobody's work runs and nobody asked for any for IDLE_S seconds."""
        with self._lock:
            return self._running_for_people == 0 and time.monotonic() - self._last_asked >= IDLE_S

    def _work(self, lane: queue.PriorityQueue) -> None:
        one_thread()
        while True:
            item = lane.get()
            priority, order, job, fn, args, kwargs = item
            if job is None:
                return
            if priority >= BACKGROUND and not self.idle():
                lane.put(item)  # back in line; anything more urgent is taken first
                time.sleep(0.2)
                continue
            with self._lock:
                self._waiting.pop(order, None)
                people = priority < BACKGROUND
                self._running_for_people += people
            if not job.future.set_running_or_notify_cancel():
                with self._lock:
                    self._running_for_people -= people
                continue
            job.started = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
            except BaseException as e:  # noqa: BLE001 - handed to whoever waits on the job
                job.finished = time.perf_counter()  # before the future: a waiter reads it as soon as it is done
                job.future.set_exception(e)
            else:
                job.finished = time.perf_counter()
                job.future.set_result(result)
            finally:
                with self._lock:
                    self._running_for_people -= people
                    if people:
                        self._last_asked = time.monotonic()

    def close(self, timeout: float = 120.0) -> None:
        """Cancel the jobs still waiting, let the running ones finish, stop the workers."""
        with self._lock:
            waiting, self._waiting = list(self._waiting.values()), {}
        for job in waiting:
            job.future.cancel()
        for i in range(self.workers):
            self._queue.put((99, -1 - i, None, None, (), {}))
        self._urgent.put((99, -1, None, None, (), {}))
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

        return self.submit(run, priority=URGENT, label="Predicting")

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

        return self.submit(run, priority=priority, label="Explaining", pass_job=True)

    def forget_explanations(self) -> None:
        """Drop the kept explanations (to time one again, or after the model changed)."""
        self._explanations.clear()

    def call(self, fn: Callable[..., object], *args, priority: int = INTERACTIVE, **kwargs):
        """Run other model work (e.g. a review explanation) in the pool and wait for it."""
        return self.submit(fn, *args, priority=priority, **kwargs).result()

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

        return self.submit(run, priority=BACKGROUND, label="Warming up")
