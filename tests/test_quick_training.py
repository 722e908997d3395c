"""`train --quick` (issue 26): the short schedule still writes a complete checkpoint the app can open (test
metrics under every availability pattern, calibration, guard), records what it did, and the test metrics read
from the calibration report's views equal those predicted afresh."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from core.model.config import QUICK_SAMPLING, QUICK_TRAINING


@pytest.fixture(scope="module")
def quick_checkpoint(own_model_of, tmp_path_factory) -> tuple[Path, Path]:
    """`python -m core train --quick` on the breast cancer table (569 cases, three tabular groups), with the
    tiny widths of tests/own_models.py so that it takes seconds; the schedule itself is --quick's."""
    from core.cli import main
    from own_models import TINY

    _, data = own_model_of("breast_cancer")
    root = tmp_path_factory.mktemp("quick")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model": TINY["model"], "diffusion": TINY["diffusion"]}), encoding="utf-8")
    out = root / "checkpoint"
    assert main(["train", "--quick", "--config", str(config), "--data", str(data), "--out", str(out),
                 "--device", "cpu"]) == 0
    return out, data


def test_quick_checkpoint_is_complete_and_records_its_schedule(quick_checkpoint):
    from core.inference import Predictor

    out, _ = quick_checkpoint
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert meta["schedule"] == "quick"
    assert {k: meta["config"]["training"][k] for k in QUICK_TRAINING} == QUICK_TRAINING
    assert {k: meta["config"]["diffusion"][k] for k in QUICK_SAMPLING} == QUICK_SAMPLING
    assert {h["phase"] for h in meta["history"]} == {1, 2, 3}
    # test metrics as the data come and under all 7 availability patterns of the three groups
    metrics = meta["test_metrics"]
    assert set(metrics) == {"natural", "mean+error+worst", "mean+error", "mean+worst", "error+worst", "mean", "error",
                            "worst"}
    assert all(0.5 < m["auroc"] <= 1 and m["n"] > 50 for m in metrics.values())
    # the calibration report: a synthesis confidence and a seed sensitivity per hidden group, interval coverage
    report = meta["calibration"]
    assert set(report["confidence"]) == set(report["seed_sensitivity"]) == {"mean", "error", "worst"}
    assert all(0 <= s < 0.5 for s in report["seed_sensitivity"].values())
    assert report["targets"] and set(report["assumed_values"]) == {"mean", "error", "worst"}
    assert meta["calibration_fit"]["temperature"] is not None
    assert (out / "guard.safetensors").is_file()
    # the app opens it: the guard loads with it, and it predicts with the K it was calibrated with
    predictor = Predictor.load(out, device="cpu")
    assert predictor.guard is not None
    assert predictor.model.config.diffusion.samples == QUICK_SAMPLING["samples"]


def test_test_metrics_from_views_equal_fresh_predictions(quick_checkpoint):
    """Training reads the pattern metrics off the calibration report's views (one prediction pass, not two):
    they must be those of predicting each pattern afresh."""
    from core.calibration.report import complete_test_views
    from core.calibration.views import Views
    from core.data.dataset import Dataset
    from core.features import dataset_features
    from core.inference import Predictor
    from core.training import test_metrics

    out, data = quick_checkpoint
    predictor = Predictor.load(out, device="cpu")
    ds = Dataset.open(data)
    table = dataset_features(ds, predictor.model.config.model, predictor.device, progress=False)
    views = complete_test_views(predictor.model, ds, table, predictor.device)
    reused = test_metrics(predictor.model, ds, table, predictor.device, views=views)
    fresh = test_metrics(predictor.model, ds, table, predictor.device)
    assert reused.keys() == fresh.keys()
    for pattern in fresh:
        assert reused[pattern]["n"] == fresh[pattern]["n"]
        assert reused[pattern]["auroc"] == pytest.approx(fresh[pattern]["auroc"], abs=1e-4), pattern
    # views lacking a pattern (a case with many modalities gets a sample of its subsets): that one is predicted
    keep = ~(views.given == np.array([True, False, False])).all(1)
    partial = Views(views.rows[keep], views.given[keep], replace(views.out, probs=views.out.probs[keep]))
    again = test_metrics(predictor.model, ds, table, predictor.device, views=partial)
    assert again["mean"]["auroc"] == pytest.approx(fresh["mean"]["auroc"], abs=1e-4)
    # a subset of the conditions (the shipped checkpoint's check): each exactly as in the full set
    some = test_metrics(predictor.model, ds, table, predictor.device, only=("natural", "mean"))
    assert set(some) == {"natural", "mean"}
    assert all(some[c]["auroc"] == pytest.approx(fresh[c]["auroc"], abs=1e-9) for c in some)
