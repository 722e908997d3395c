"""`python -m core bench --serve` (which runs `python -m tools.serve_bench`): the app under several users
at once, timed as they meet it. It lives outside `core` because it drives the Streamlit pages.

Each simulated user is a real session of the app (Streamlit's AppTest runs the very page scripts, with the
one shared model service and caches a server has), in its own thread, all in one process as in
`streamlit run`. A user opens the case explorer, then for a few rounds switches a modality off or on and
asks for an explanation, pausing to read between actions; then signs in to the review study and rates
items. Every action is timed from the click to the finished page run (what the browser waits for,
without its drawing), and the bench reports p50/p95 per action; for explanations also when their first
part (contributions, labs, heatmap) was on the page and how long they waited for a worker.

Before the crowd arrives, one session measures the first explanation after start (the model is warmed
up in the background when the first page opens; the user reads the prediction for `think` seconds first,
as people do) against a warm one. The review study's explanations are computed once and kept on disk,
prepared in the background while a study runs; the bench prepares the items its reviewers will see
first, as a running study has them, and reports how long that took.
"""

from __future__ import annotations

import os
import random
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from core.jsonout import dumps
from core.paths import ROOT

APP = str(ROOT / "app.py")
SCALES = ("relevance", "usefulness", "trust")


def _one_runtime() -> None:
    """AppTest swaps a mock Streamlit Runtime in for each page run and clears it afterwards; with several sessions
    running at once in threads, one session's clearing pulls the runtime from under another's run ("Runtime hasn't
    been created", a page run that draws nothing). A server has one runtime for every session: the bench keeps the
    first mock for all of them (and one script cache, below)."""
    import streamlit.testing.v1.app_test as app_test
    from streamlit.runtime import Runtime

    if getattr(app_test.Runtime, "shared_by_the_bench", False):
        return

    class _KeepFirst(type(Runtime)):
        @property
        def _instance(cls):
            return Runtime._instance

        @_instance.setter
        def _instance(cls, value) -> None:
            if value is not None and Runtime._instance is None:
                Runtime._instance = value

    class SharedRuntime(Runtime, metaclass=_KeepFirst):
        shared_by_the_bench = True

    app_test.Runtime = SharedRuntime
    # Each AppTest compiles the page scripts in a cache of its own; CPython 3.11 can fail compiling in several
    # threads at once ("AST constructor recursion depth mismatch"). A server has one script cache, so one lock.
    from streamlit.runtime.scriptrunner import script_cache

    shared_lock, init = threading.Lock(), script_cache.ScriptCache.__init__

    def one_lock(self) -> None:
        init(self)
        self._lock = shared_lock

    script_cache.ScriptCache.__init__ = one_lock


def _session():
    from streamlit.testing.v1 import AppTest

    _one_runtime()
    return AppTest.from_file(APP, default_timeout=900)


def _timed(record: dict, action: str, fn) -> object:
    t = time.perf_counter()
    out = fn()
    record.setdefault(action, []).append(time.perf_counter() - t)
    if out is not None and getattr(out, "exception", None):
        raise RuntimeError(f"{action}: {[e.value for e in out.exception]}")
    return out


def _explained(at) -> bool:
    return any("Explained in" in c.value for c in at.caption)


def first_explain(think: float) -> dict:
    """Cold: a new session opens the app in this fresh process and, after `think` s, asks for an
    explanation; then a second session asks for the same explanation (warm)."""
    from pages.common import get_service

    rec: dict = {}
    at = _timed(rec, "open (cold)", lambda: _session().run())
    time.sleep(think)
    at = _timed(rec, "first explain", lambda: at.button(key="explain").click().run())
    assert _explained(at), "the first explanation did not finish"
    get_service().forget_explanations()  # the same case again, computed again: warm, not from the cache
    other = _session().run()
    other = _timed(rec, "warm explain", lambda: other.button(key="explain").click().run())
    assert _explained(other)
    return {k: v[0] for k, v in rec.items()}


def explorer_user(i: int, rounds: int, think: tuple[float, float], rec: dict) -> None:
    rng = random.Random(i)
    at = _timed(rec, "open case explorer", lambda: _session().run())
    demos = at.selectbox(key="demo").options
    at = _timed(rec, "choose a case", lambda: at.selectbox(key="demo").set_value(demos[(3 * i + 1) % len(demos)]).run())
    for _ in range(rounds):
        time.sleep(rng.uniform(*think))
        toggle = at.toggle[rng.randrange(len(at.toggle))]
        others_on = sum(t.value for t in at.toggle if t.key != toggle.key)
        if toggle.value and others_on == 0:
            continue
        at = _timed(rec, "switch a modality", lambda: toggle.set_value(not toggle.value).run())
        time.sleep(rng.uniform(*think))
        before = len(at.session_state["explain_timing"]) if "explain_timing" in at.session_state else 0
        at = _timed(rec, "explain", lambda: at.button(key="explain").click().run())
        if not _explained(at):
            raise RuntimeError(f"user {i}: no explanation shown")
        timings = list(at.session_state["explain_timing"].values())
        if len(timings) > before:  # a new explanation (one this session had already is shown at once)
            for k, action in (("first_part", "explain: first part on the page"), ("waited", "explain: wait for a worker")):
                rec.setdefault(action, []).append(timings[-1][k])


def review_user(i: int, items: int, think: tuple[float, float], rec: dict) -> None:
    rng = random.Random(100 + i)
    at = _session().run()
    at.switch_page("pages/review.py").run()
    at.text_input(key="reviewer_name").input(reviewer_name(i))
    at.text_input(key="reviewer_code").input(os.environ["RMD_REVIEWER_CODE"])
    at.text_input(key="reviewer_pin").input("bench-pin")
    at.text_input(key="reviewer_pin_again").input("bench-pin")
    at = _timed(rec, "review sign-in to first item", lambda: at.button[0].click().run())
    for _ in range(items):
        pos = next(int(r.key.rsplit("_", 1)[1]) for r in at.radio if r.key and r.key.startswith("relevance_"))
        for s in SCALES:
            time.sleep(rng.uniform(0.2, 0.6))
            at = _timed(rec, "review answer a question", lambda: at.radio(key=f"{s}_{pos}").set_value(rng.randint(1, 5)).run())
        time.sleep(rng.uniform(*think))
        at = _timed(rec, "review save to next item", lambda: at.button(key=f"save_{pos}").click().run())
        if not any("Saved your rating" in s.value for s in at.success):
            raise RuntimeError(f"reviewer {i}: the rating was not saved")


def reviewer_name(i: int) -> str:
    return f"bench-{i}"


def prepare_review(reviewers: list[str], items: int) -> dict:
    """Compute (or find on disk) the first `items` explanations of each reviewer's queue, with the app's
    own study set-up (core/review/prepared.py)."""
    from core.data.cohort.generate import ensure_cohort
    from core.data.dataset import Dataset
    from core.demo import study_cases
    from core.explain.explanation import METHODS
    from core.paths import default_cohort_dir
    from core.review.models import review_models
    from core.review.prepared import study_explanations
    from core.review.store import ReviewStore

    t0 = time.perf_counter()
    ds = Dataset.open(ensure_cohort(default_cohort_dir(), progress=False))
    lineup = review_models()
    demos = {d.case_id: d for d in study_cases(ds)}
    prep = study_explanations(lineup, ds)  # computed here, one torch thread (as the app's workers)
    keys = {(demos[it.case_id].row, it.case_id, it.model, it.method) for r in reviewers
            for it in ReviewStore.queue(r, list(demos), list(METHODS), lineup.names)[:items]}
    computed = [k for k in keys if not prep.ready(k)]
    for k in sorted(keys):
        prep.get(k)
    prep.close()
    return {"items": len(keys), "computed": len(computed), "seconds": time.perf_counter() - t0}


def _summary(times: list[float]) -> dict:
    a = np.asarray(times)
    return {"n": len(a), "p50_s": float(np.percentile(a, 50)), "p95_s": float(np.percentile(a, 95)),
            "max_s": float(a.max())}


def serve_bench(users: int = 4, rounds: int = 3, review_items: int = 3, think: tuple[float, float] = (1.0, 3.0),
                first_think: float = 10.0) -> dict:
    """The figures above, with a fresh review database (and the demo reviewer code unless one is set)."""
    saved = {k: os.environ.get(k) for k in ("RMD_REVIEW_DB", "RMD_REVIEWER_CODE")}
    os.environ["RMD_REVIEW_DB"] = str(Path(tempfile.mkdtemp(prefix="rmd-serve-bench-")) / "review.sqlite3")
    os.environ.setdefault("RMD_REVIEWER_CODE", "demo")
    try:
        return _bench(users, rounds, review_items, think, first_think)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _bench(users: int, rounds: int, review_items: int, think: tuple[float, float], first_think: float) -> dict:
    from core.pool_threads import available_cores, default_workers

    t0 = time.perf_counter()
    cold = first_explain(first_think)
    prepared = prepare_review([reviewer_name(i) for i in range(users)], review_items + 1)
    per_user: list[dict] = [{} for _ in range(users)]
    errors: list[str] = []

    def run(i: int) -> None:
        try:
            explorer_user(i, rounds, think, per_user[i])
            review_user(i, review_items, think, per_user[i])
        except Exception as e:  # noqa: BLE001 - reported, the other users go on
            errors.append(f"user {i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=run, args=(i,), name=f"user-{i}") for i in range(users)]
    t_load = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    actions: dict[str, list[float]] = {}
    for rec in per_user:
        for k, v in rec.items():
            actions.setdefault(k, []).extend(v)
    return {"users": users, "rounds": rounds, "review_items": review_items, "think_s": list(think),
            "cores": available_cores(), "workers": default_workers(), "torch_threads_per_worker": 1,
            "first_explain": {**cold, "think_s": first_think, "ratio": cold["first explain"] / cold["warm explain"]},
            "actions": {k: _summary(v) for k, v in actions.items()},
            "review_prepared": prepared, "load_seconds": time.perf_counter() - t_load, "seconds": time.perf_counter() - t0, "errors": errors}


def markdown(res: dict) -> str:
    f = res["first_explain"]
    lines = [f"{res['users']} simulated users at once, {res['cores']} cores, {res['workers']} model workers × "
             f"{res['torch_threads_per_worker']} torch thread; think time {res['think_s'][0]:g}–{res['think_s'][1]:g} s.",
             "", "| action | n | p50 (s) | p95 (s) | max (s) |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {v['n']} | {v['p50_s']:.2f} | {v['p95_s']:.2f} | {v['max_s']:.2f} |"
              for k, v in res["actions"].items()]
    lines += ["", f"First explanation after start (after {f['think_s']:g} s reading the prediction): "
              f"{f['first explain']:.2f} s; warm: {f['warm explain']:.2f} s ({f['ratio']:.2f}×). Opening the app cold: "
              f"{f['open (cold)']:.1f} s.",
              "", f"Review explanations prepared before the load, as a running study has them: {res['review_prepared']['items']} "
              f"items ({res['review_prepared']['computed']} computed now, the rest found on disk) in "
              f"{res['review_prepared']['seconds']:.0f} s."]
    if res["errors"]:
        lines += ["", "Errors: " + "; ".join(res["errors"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from core.cli import write_outputs

    p = argparse.ArgumentParser(prog="python -m tools.serve_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--review-items", type=int, default=3)
    p.add_argument("--out", help="also write bench_serve.{json,md} into this folder")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    res = serve_bench(users=args.users, rounds=args.rounds, review_items=args.review_items)
    write_outputs(args.out, "bench_serve", res, markdown(res))
    print(dumps(res) if args.json else markdown(res))
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
