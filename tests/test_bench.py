"""The benchmark command end to end: every measurement the issue names, with plausible values."""

from __future__ import annotations

import json
import subprocess
import sys

from core.bench import ig_step_sweep
from core.device import pick_device
from core.paths import ROOT


def test_bench_json(default_cohort):
    out = subprocess.run([sys.executable, "-m", "core", "bench", "--json", "--repeats", "2", "--no-accuracy",
                          "--no-app", "--batches", "1,4"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout)
    assert res["device"] == str(pick_device()) and res["model_load_s"] > 0 and res["peak_memory_mb"] > 100
    assert set(res["latency_ms"]) == {"image", "note", "labs", "image+note", "image+labs", "note+labs", "image+note+labs"}
    assert set(res["must_style_latency_ms"]) == set(res["latency_ms"]) - {"image+note+labs"}
    assert all(v > 0 for v in res["latency_ms"].values())
    # 250 denoiser calls one after another cannot be as fast as 10 batched ones
    assert all(v > 1 for v in res["speedup_over_must_style"].values())
    assert set(res["synthesis_and_classification_ms"]) == set(res["must_style_latency_ms"])
    assert all(v["speedup"] > 1 for v in res["synthesis_and_classification_ms"].values())
    assert res["missing_over_complete"] > 0 and res["explanation_ms"] > 0
    assert set(res["throughput_cases_per_s"]) == {"1", "4"}


def test_ig_step_sweep_error_shrinks_with_steps(predictor, default_dataset):
    present = default_dataset.presence()
    complete = [int(i) for i in default_dataset.indices("test") if present[i].all()][:2]
    sweep = ig_step_sweep(predictor, [default_dataset.load(i) for i in complete], image_steps=(2, 32), text_steps=(2, 16))
    assert set(sweep) == {"image", "note"}
    for name, steps in sweep.items():
        few, many = list(steps.values())
        assert many["relative_completeness_error"] < few["relative_completeness_error"], (name, steps)
        assert many["ms"] > 0
