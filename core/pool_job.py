"""One queued piece of model work in the app's pool (core/serve.py): its status for the page (how many jobs
are ahead, which stage it has reached), the stages and partial result it reports as it goes, its timing (queued,
started, finished) and its time limit, and its answer (`result`, JobTimeout past the limit).
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterable
from concurrent.futures import Future, TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.serve import ModelService


@dataclass
class Job:
    """A queued piece of model work. `stages` grows as the work reports progress (read it from any
    thread: it is only appended to), `partial` is what the work has produced so far (if it says).
    `kind` sets its time limit (core/serve.py's TIMEOUTS); `owners`: the sessions waiting for it (None:
    someone outside any browser session, e.g. the review-preparation thread); `key`: asking again joins
    this job."""
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
    kind: str = "work"
    key: Hashable | None = None
    owners: set = field(default_factory=set)
    deadline: float | None = None  # time.monotonic() by which it must be answered (None: no one waits yet)
    _service: "ModelService | None" = field(default=None, repr=False)
    _order: int = field(default=-1, repr=False)  # its place in the queue (changes when promoted)
    _predict_lane: bool = field(default=False, repr=False)
    _call: tuple | None = field(default=None, repr=False)

    def done(self) -> bool:
        self._expire_if_late()
        return self.future.done()

    def result(self, timeout: float | None = None):
        """The answer; JobTimeout past the kind's time limit, whatever `timeout` says."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:  # a second at a time at most: a deadline may be set while it waits (`promote`)
            limits = [t - time.monotonic() for t in (self.deadline, end) if t is not None]
            try:
                return self.future.result(max(0.0, min(limits + [1.0])))
            except FutureTimeout:
                if self._expire_if_late():
                    continue  # now answered with JobTimeout
                if end is not None and time.monotonic() >= end:
                    raise

    def _expire_if_late(self) -> bool:
        late = self.deadline is not None and time.monotonic() >= self.deadline and not self.future.done()
        if late and self._service is not None:
            self._service._expire(self)
        return late

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
