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
            must[name] = timed(lambda: must_style_probs(predictor, predictor.features([case]), [0], drop), max(3, repeats // 3))
            ours = timed(lambda: predict_table(predictor.model, features, [0], drop, device=predictor.device,
                                               describe=False), repeats)
            theirs = timed(lambda: must_style_probs(predictor, features, [0], drop), max(3, repeats // 3))
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
