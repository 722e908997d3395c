"""Benchmarks measured on the machine they run on: medians over repeated runs after a warm-up.

- latency per case, all modalities present and under every missing pattern (files already parsed);
- the same with a MUST-style sampler (50 DDIM steps × 5 samples, drawn one after another) for
  comparison, end to end and from cached encoder outputs (the samplers alone), and both samplers' AUROC on the test split, so speed is compared at equal accuracy;
- latency of a full explanation; batch throughput (batch 1, 8 and 32 by default); peak memory; model load time;
  the time from a fresh app process to its first prediction;
- optionally (`ig_steps`) how Integrated Gradients' completeness error and time fall with the number of
  integration steps, which is how the explanation's step counts were chosen.
"""

from __future__ import annotations

import platform
import resource
import subprocess
import sys
import time
from statistics import median
from typing import Callable

import numpy as np
import torch

from core.data.dataset import Dataset
from core.demo import demo_cases
from core.evaluation.metrics import macro_auroc
from core.evaluation.patterns import availability_patterns, pattern_name
from core.features import FeatureTable, dataset_features
from core.inference import Predictor, predict_table
from core.paths import ROOT

MUST_STEPS, MUST_SAMPLES = 50, 5


def timed(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median wall time of fn() in milliseconds, after warm-up calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return float(median(times))


def must_style_probs(predictor: Predictor, table: FeatureTable, idx, drop) -> np.ndarray:
    """MUST's sampler: 5 samples of 50 DDIM steps, one after another, probabilities averaged."""
    runs = [predict_table(predictor.model, table, idx, drop, samples=1, steps=MUST_STEPS, seed=s,
                          device=predictor.device, describe=False).probs for s in range(MUST_SAMPLES)]
    return np.mean(runs, 0)


def sampler_auroc(predictor: Predictor, ds: Dataset, table: FeatureTable) -> dict:
    """Test AUROC of our sampler and the MUST-style one for every pattern with something missing."""
    te = ds.indices("test")
    complete = te[table.present[te].all(1)]
    y = ds.labels[complete]
    names = [n for n, _ in predictor.modalities]
    out = {}
    for pattern in availability_patterns(len(names))[1:]:
        drop = np.tile(~np.asarray(pattern), (len(complete), 1))
        ours = predict_table(predictor.model, table, complete, drop, device=predictor.device,
                             describe=False).probs
        out[pattern_name(pattern, names)] = {"ours": macro_auroc(y, ours),
                                             "must_style": macro_auroc(y, must_style_probs(predictor, table, complete, drop))}
    return out


def app_first_prediction_seconds() -> float:
    """A fresh Python process runs the app (AppTest) until the case explorer shows its first prediction."""
    code = ("import time; t=time.perf_counter(); from streamlit.testing.v1 import AppTest; "
            f"at=AppTest.from_file({str(ROOT / 'app.py')!r}, default_timeout=600).run(); "
            "assert at.metric and not at.exception; print(time.perf_counter()-t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=900)
    if out.returncode != 0:
        return float("nan")
    return float(out.stdout.strip().splitlines()[-1])


def ig_step_sweep(predictor: Predictor, cases: list, image_steps=(8, 16, 32, 64), text_steps=(4, 8, 16, 32)) -> dict:
    """Per modality and fixed step count: median relative completeness error |Σattr − Δf| / |Δf| (Δf: the
    change of log p(target) from the baseline to the input, core/explain/ig.py) and median milliseconds."""
    from core.explain.graph import CaseGraph
    from core.explain.image import image_attribution
    from core.explain.text import note_ig

    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, kind in predictor.modalities:
        if kind not in ("image", "text"):
            continue
        for steps in image_steps if kind == "image" else text_steps:
            errors, times = [], []
            for case in cases:
                graph = CaseGraph(predictor, case)
                t = time.perf_counter()
                if kind == "image":
                    error = image_attribution(graph, name, "integrated_gradients", steps).relative_error
                else:
                    error = note_ig(graph, name, "integrated_gradients", steps)[1].relative_error
                times.append((time.perf_counter() - t) * 1000)
                errors.append(error)
            out.setdefault(name, {})[str(steps)] = {"relative_completeness_error": float(median(errors)),
                                                    "ms": float(median(times))}
    return out


def bench(checkpoint=None, device=None, repeats: int = 10, accuracy: bool = True, app: bool = True,
          ig_steps: bool = False, batches: tuple[int, ...] = (1, 8, 32)) -> dict:
    from core.data.cohort.generate import ensure_cohort
    from core.explain.explanation import explain_case
    from core.paths import default_cohort_dir

    t = time.perf_counter()
    predictor = Predictor.load(checkpoint, device)
    load_s = time.perf_counter() - t
    ds = Dataset.open(ensure_cohort(default_cohort_dir(), progress=False))
    case = ds.load(demo_cases(ds, 1)[1].row)  # a complete pneumonia case
    names = [n for n, _ in predictor.modalities]
    res: dict = {"device": str(predictor.device), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                 "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                             "torch_threads": torch.get_num_threads()},
                 "model_load_s": load_s, "sampler": {"ours": {"steps": predictor.model.config.diffusion.sample_steps,
                                                               "samples": predictor.model.config.diffusion.samples},
                                                      "must_style": {"steps": MUST_STEPS, "samples": MUST_SAMPLES}}}
    latency, must, sampler = {}, {}, {}
    features = predictor.features([case])  # encoders run once: the sampler timings below exclude them
    for pattern in availability_patterns(len(names)):
        absent = [n for n, keep in zip(names, pattern) if not keep]
        name = pattern_name(pattern, names)
        latency[name] = timed(lambda: predictor.predict(case, absent=absent), repeats)
        if absent:
            drop = np.array([[n in absent for n in names]])
            # a MUST-style call is 250 denoiser calls one after another: its first call warms it up
            must[name] = timed(lambda: must_style_probs(predictor, predictor.features([case]), [0], drop),
                               max(1, repeats // 3), warmup=1)
            ours = timed(lambda: predict_table(predictor.model, features, [0], drop, device=predictor.device,
                                               describe=False), repeats)
            theirs = timed(lambda: must_style_probs(predictor, features, [0], drop), max(1, repeats // 3), warmup=1)
            sampler[name] = {"ours_ms": ours, "must_style_ms": theirs, "speedup": theirs / ours}
    res["latency_ms"] = latency
    res["must_style_latency_ms"] = must
    res["synthesis_and_classification_ms"] = sampler  # from cached encoder outputs: the samplers themselves
    full = latency[pattern_name((True,) * len(names), names)]
    res["missing_over_complete"] = max(v for k, v in latency.items() if k != pattern_name((True,) * len(names), names)) / full
    res["speedup_over_must_style"] = {k: must[k] / latency[k] for k in must}
    res["explanation_ms"] = timed(lambda: explain_case(predictor, case), max(3, repeats // 3), warmup=1)
    present = ds.presence()
    cases = [ds.load(int(i)) for i in ds.indices("test") if present[i].all()][:max(batches)]  # comparable across batches
    res["throughput_cases_per_s"] = {str(b): len(cases[:b]) / (timed(lambda: predictor.predict_many(cases[:b]),
                                                                      max(3, repeats // 3)) / 1000)
                                     for b in batches}
    if ig_steps:
        res["ig_steps"] = ig_step_sweep(predictor, cases[:5])
    if accuracy:
        res["sampler_auroc"] = sampler_auroc(predictor, ds, dataset_features(ds, predictor.model.config.model,
                                                                             predictor.device, progress=False))
    if app:
        res["app_start_to_first_prediction_s"] = app_first_prediction_seconds()
    res["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        res["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return res


# ---- a study server under load (`bench --serve --minutes M`) -----------------------------------------------
LOOK_AHEAD = 3  # as the review page: a reviewer's next items are prepared in the background


def _spread(times: list[float]) -> dict:
    a = np.asarray(times, dtype=float)
    if not len(a):
        return {"n": 0}
    return {"n": int(len(a)), "p50_s": float(np.percentile(a, 50)), "p95_s": float(np.percentile(a, 95)),
            "max_s": float(a.max())}


def serve_load(reviewers: int = 8, users: int = 4, minutes: float = 10.0, read_s: tuple[float, float] = (30.0, 90.0),
               think_s: tuple[float, float] = (1.0, 4.0), prepared_first: int = 1, seed: int = 0) -> dict:
    """Reviewers and case-explorer users against one server's model pool and review store for `minutes`, each in a
    thread of its own with a browser session of its own, doing what the pages do (without drawing them):

    - a reviewer signs in (a session in the real store), then per item fetches its explanation through the
      study's prepared cache and the shared pool (core/review/prepared.py), has its next LOOK_AHEAD items
      prepared ahead, reads and answers for `read_s` seconds, and saves (the session re-validated by each save);
      now and then it changes an earlier rating;
    - a user opens a demo case, switches modalities on and off (`think_s` apart) and asks for an explanation now
      and then (any of the page's methods), all through core/serve.py's pool.

    Before the clock starts: a fresh database and an empty explanation cache, each reviewer's first
    `prepared_first` items prepared (as a running study has them); every later item is prepared ahead during the
    load or, when a reviewer outruns that, computed while they wait. Reported: every action's p50/p95, ratings
    acknowledged against those in the database at the end (lost, duplicated), errors, and for each reviewer
    waiting on an unprepared item, the wait against that item's compute time."""
    import random
    import tempfile
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    from core.data.cohort.generate import ensure_cohort
    from core.explain.explanation import METHODS
    from core.paths import DEFAULT_CHECKPOINT, default_cohort_dir
    from core.review.models import review_models
    from core.review.prepared import study_explanations
    from core.review.store import Item, ReviewStore
    from core.demo import study_cases
    from core.pool_threads import available_cores
    from core.serve import ModelService

    tmp = Path(tempfile.mkdtemp(prefix="rmd-serve-load-"))
    ds = Dataset.open(ensure_cohort(default_cohort_dir(), progress=False))
    predictor = Predictor.load()
    local = threading.local()
    service = ModelService(predictor, session_of=lambda: getattr(local, "session", None))
    lineup = review_models()
    shipped = {m.name: predictor for m in lineup.models if m.path.resolve() == DEFAULT_CHECKPOINT.resolve()}
    rows = {c.case_id: c.row for c in study_cases(ds)}
    prep = study_explanations(lineup, ds, shipped, pool=service, case_ids=list(rows), root=tmp)
    store = ReviewStore(tmp / "review.sqlite3")
    names = [f"reviewer-{i}" for i in range(reviewers)]
    queues = {n: [((rows[it.case_id], it.case_id, it.model, it.method), it)
                  for it in ReviewStore.queue(n, list(rows), list(METHODS), lineup.names)] for n in names}
    t0 = time.perf_counter()
    with ThreadPoolExecutor(service.workers) as ex:  # the pool's workers, busy from the start
        list(ex.map(prep.get, {k for n in names for k, _ in queues[n][:prepared_first]}))
    prepare_s = time.perf_counter() - t0

    lock = threading.Lock()
    actions: dict[str, list[float]] = {}
    unprepared: list[dict] = []
    errors: list[str] = []
    acknowledged: dict[tuple[str, Item], tuple[int, int, int]] = {}
    saves = [0]
    end = time.monotonic() + 60 * minutes

    def timed(action: str, fn):
        t = time.perf_counter()
        out = fn()
        with lock:
            actions.setdefault(action, []).append(time.perf_counter() - t)
        return out

    def pause(seconds: float) -> bool:
        """Sleep, but not past the end; whether there is time left."""
        time.sleep(max(0.0, min(seconds, end - time.monotonic())))
        return time.monotonic() < end

    def attempt(who: str, fn) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - counted; the simulated person goes on
            with lock:
                errors.append(f"{who}: {type(e).__name__}: {e}")
            time.sleep(1.0)

    def reviewer(name: str) -> None:
        rng, local.session = random.Random(f"{seed}-{name}"), name
        session = store.open_session(name)
        pending, done = list(queues[name]), []

        def save(item: Item) -> None:
            values = (rng.randint(1, 5), rng.randint(1, 5), rng.randint(1, 5))
            timed("review save", lambda: store.save(name, item, *values, session=session.id))
            with lock:
                acknowledged[(name, item)], saves[0] = values, saves[0] + 1

        def one_item() -> None:
            key, item = pending.pop(0)
            ready = prep.ready(key)
            t = time.perf_counter()
            exp = timed("review fetch: prepared" if ready else "review fetch: unprepared", lambda: prep.get(key))
            if not ready:
                with lock:
                    unprepared.append({"wait_s": time.perf_counter() - t, "compute_s": float(exp.seconds),
                                       "model": item.model, "method": item.method})
            prep.prefetch([k for k, _ in pending[:LOOK_AHEAD]])
            if pause(rng.uniform(*read_s)):
                save(item)
                done.append(item)
                if rng.random() < 0.1 and len(done) > 1:
                    save(rng.choice(done[:-1]))  # a changed earlier rating: an update, never a second row

        while pending and time.monotonic() < end:
            attempt(name, one_item)

    def explorer(i: int) -> None:
        rng, local.session = random.Random(f"{seed}-user-{i}"), f"user-{i}"
        demos = demo_cases(ds)
        names_ = [n for n, _ in predictor.modalities]

        def one_case() -> None:
            demo = rng.choice(demos)
            case, key, absent = ds.load(demo.row), f"demo-{demo.case_id}", []
            timed("open a case", lambda: service.predict_job(case, key).result())
            for _ in range(rng.randint(3, 6)):
                if not pause(rng.uniform(*think_s)):
                    return
                name = rng.choice(names_)
                absent = [n for n in absent if n != name] if name in absent else absent + [name]
                if len(absent) == len(names_):
                    absent.remove(name)
                timed("switch a modality", lambda: service.predict_job(case, key, absent).result())
                if rng.random() < 0.3 and pause(rng.uniform(*think_s)):
                    method = rng.choice([m for m in METHODS if m != "random"])
                    timed("explain", lambda: service.explain_job(case, key, absent, method).result())

        while time.monotonic() < end:
            attempt(f"user-{i}", one_case)

    threads = [threading.Thread(target=reviewer, args=(n,), daemon=True) for n in names]
    threads += [threading.Thread(target=explorer, args=(i,), daemon=True) for i in range(users)]
    t_load = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(60.0, end - time.monotonic() + 600))  # a last explanation may still be on its way
    load_s = time.perf_counter() - t_load
    prep.close()
    service.close()
    rows_db = store.all_ratings()
    found = {(r["reviewer"], Item(r["case_id"], r["method"], r["model"])): (r["relevance"], r["usefulness"], r["trust"])
             for r in rows_db}
    ratios = [u["wait_s"] / u["compute_s"] for u in unprepared if u["compute_s"] > 0]
    return {"reviewers": reviewers, "users": users, "minutes": minutes, "read_s": list(read_s), "think_s": list(think_s),
            "cores": available_cores(), "workers": service.workers, "prepared_first_s": prepare_s, "load_s": load_s,
            "actions": {k: _spread(v) for k, v in sorted(actions.items())},
            "ratings": {"saves_acknowledged": saves[0], "ratings_acknowledged": len(acknowledged),
                        "rows_in_database": len(rows_db),
                        "lost": sum(found.get(k) != v for k, v in acknowledged.items()),
                        "duplicated": len(rows_db) - len(found) + len(set(found) - set(acknowledged))},
            "unprepared_waits": {**_spread([u["wait_s"] for u in unprepared]),
                                 "compute": _spread([u["compute_s"] for u in unprepared]),
                                 "ratio_p50": float(np.median(ratios)) if ratios else None,
                                 "ratio_max": float(max(ratios)) if ratios else None,
                                 "within_2x": int(sum(r <= 2.0 for r in ratios)), "each": unprepared},
            "errors": errors, "folder": str(tmp)}


def serve_load_markdown(res: dict) -> str:
    r, w = res["ratings"], res["unprepared_waits"]
    lines = [f"{res['reviewers']} reviewers and {res['users']} case-explorer users for {res['minutes']:g} min, "
             f"{res['cores']} cores, {res['workers']} model workers (reading an item {res['read_s'][0]:g}–"
             f"{res['read_s'][1]:g} s, {res['think_s'][0]:g}–{res['think_s'][1]:g} s between explorer actions).", "",
             "| action | n | p50 (s) | p95 (s) | max (s) |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {v['n']} | {v['p50_s']:.2f} | {v['p95_s']:.2f} | {v['max_s']:.2f} |"
              for k, v in res["actions"].items() if v["n"]]
    lines += ["", f"Ratings: {r['saves_acknowledged']} saves acknowledged ({r['ratings_acknowledged']} distinct items), "
              f"{r['rows_in_database']} rows in the database: {r['lost']} lost, {r['duplicated']} duplicated. "
              f"Errors: {len(res['errors'])}."]
    if w["n"]:
        lines += ["", f"A reviewer waiting on an unprepared item ({w['n']} times): wait p50 {w['p50_s']:.1f} s, p95 "
                  f"{w['p95_s']:.1f} s, against compute p50 {w['compute']['p50_s']:.1f} s; wait / compute p50 "
                  f"{w['ratio_p50']:.2f}×, max {w['ratio_max']:.2f}×, within 2× {w['within_2x']} of {w['n']}."]
    if res["errors"]:
        lines += ["", "Errors: " + "; ".join(res["errors"][:20])]
    return "\n".join(lines)
