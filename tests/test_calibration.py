"""Calibration: per-case noise, the temperature and prior fit, the synthesis confidence, the assumed lab
values, and the calibration command end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from core.calibration.temperature import fit_temperature, reset
from core.calibration.views import case_views
from core.checkpoint import load_checkpoint
from core.data.dataset import Dataset
from core.features import dataset_features
from core.inference import Predictor, predict_table
from core.model.robustmdiff import CONFIDENCE_RANGE, SIGNALS, case_seeds
from core.paths import ROOT
from core.training import rare_weights


@pytest.fixture(scope="module")
def quick(quick_checkpoint, small_cohort):
    model, meta = load_checkpoint(quick_checkpoint)
    ds = Dataset.open(small_cohort)
    return model, meta, ds, dataset_features(ds, model.config.model, progress=False)


def test_a_case_gives_identical_numbers_alone_and_in_any_batch(quick):
    model, _, _, table = quick
    rows = np.flatnonzero(table.present.all(1))[:9]
    drop = np.zeros((len(rows), 3), bool)
    drop[:, 2] = True  # labs synthesized
    drop[::2, 0] = True  # and, for some, the image too
    together = predict_table(model, table, rows, drop)
    for j in (0, 4, 7):
        alone = predict_table(model, table, rows[j:j + 1], drop[j:j + 1])
        reordered = predict_table(model, table, rows[::-1], drop[::-1])
        r = len(rows) - 1 - j
        for a, b, c in ((alone.probs[0], together.probs[j], reordered.probs[r]),
                        (alone.confidence[0], together.confidence[j], reordered.confidence[r]),
                        (alone.expected_change[0], together.expected_change[j], reordered.expected_change[r]),
                        (alone.assumed["labs"][0][0], together.assumed["labs"][0][j], reordered.assumed["labs"][0][r])):
            np.testing.assert_allclose(a, b, atol=1e-5, equal_nan=True)
            np.testing.assert_allclose(a, c, atol=1e-5, equal_nan=True)


def test_noise_depends_on_the_case_and_its_given_inputs_only():
    keys = np.array([[11, 22, 33], [11, 22, 44], [55, 22, 33]])
    given = np.array([[True, True, False]] * 3)
    s = case_seeds(keys, given, 0)
    assert s[0] == s[1]  # differ only in a modality that is not given
    assert s[0] != s[2]  # differ in a given one
    assert case_seeds(keys, given, 1)[0] != s[0]  # the sampler seed matters
    assert len({*case_seeds(np.arange(300).reshape(100, 3), np.ones((100, 3), bool), 0)}) == 100


def test_rare_weighting_only_for_declared_rare_classes():
    labels = np.array([0] * 80 + [1] * 15 + [2] * 5)
    assert (rare_weights(labels, 3, 0.5, []) == 1).all()
    w = rare_weights(labels, 3, 0.5, [2])
    assert w[labels == 2][0] == pytest.approx(4.0) and (w[labels != 2] == 1).all()
    balanced = rare_weights(labels, 3, 1.0, [], balance_gamma=1.0)  # plain class balancing, when asked for
    assert np.bincount(labels, weights=balanced) == pytest.approx([80, 80, 80])
    both = rare_weights(labels, 3, 1.0, [2], balance_gamma=0.0)  # the rare class's own exponent
    assert np.bincount(labels, weights=both) == pytest.approx([80, 15, 80])


def test_prior_correction_matches_class_frequencies(quick):
    """At the optimum of the class bias the (case-weighted) mean predicted probability of each class equals
    its validation frequency, undoing oversampling; the fit is on the sample-averaged probabilities."""
    model, _, ds, table = quick
    va = ds.indices("val")
    reset(model)
    raw = case_views(model, table, va, describe=False)
    fit = fit_temperature(model, raw, ds.labels[raw.rows])
    views = case_views(model, table, va, describe=False)
    _, inverse, counts = np.unique(views.rows, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inverse]
    mean_p = (views.out.probs * w[:, None]).sum(0) / w.sum()
    freq = np.array([(w * (ds.labels[views.rows] == c)).sum() for c in range(len(model.info.classes))]) / w.sum()
    assert np.abs(mean_p - freq).max() < 0.02
    assert fit["val_nll_after"] < fit["val_nll_before"]
    assert len(fit["temperature"]) == 7  # one per availability pattern of three modalities


def test_confidence_never_reaches_0_or_1_and_stays_within_what_validation_saw(quick):
    model = quick[0]
    m, f = len(model.info.names), len(SIGNALS) + len(model.info.names)
    extreme = torch.cat([torch.full((1, m, f), -1e9), torch.full((1, m, f), 1e9)])
    c = model.confidence(extreme)
    assert ((c >= CONFIDENCE_RANGE[0]) & (c <= CONFIDENCE_RANGE[1])).all()
    edge = model.confidence(torch.stack([model.conf_lo, model.conf_hi]))
    torch.testing.assert_close(c, edge)  # beyond the validation range, the answer is that of its edge


def test_assumed_lab_values_are_reported_in_units_with_intervals(quick_checkpoint, small_cohort):
    predictor = Predictor.load(quick_checkpoint)
    ds = Dataset.open(small_cohort)
    row = int(np.flatnonzero([ds.load(i).inputs["labs"] is not None for i in range(40)])[0])
    result = predictor.predict(ds.load(row), absent=["labs"])
    values = result.synthesized["labs"]["expected_values"]
    units = {lab.name: lab.unit for lab in predictor.spec.lab_features("labs")}
    assert set(values) == set(units)
    for name, v in values.items():
        assert v["low"] <= v["median"] <= v["high"] and v["unit"] == units[name]
    assert result.assumed_text("labs").startswith("assumed ")
    enc = predictor.model.encoders["labs"]
    x = torch.tensor([[1.0, 5.0, 120.0] + [3.0] * (len(units) - 3)])
    torch.testing.assert_close(enc.inverse(enc.transform(x)), x, rtol=1e-4, atol=1e-4)


def test_calibration_command_end_to_end(quick_checkpoint, small_cohort, tmp_path):
    out = subprocess.run([sys.executable, "-m", "core", "calibration", "--checkpoint", str(quick_checkpoint),
                          "--data", str(small_cohort), "--json", "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert set(report["confidence"]) == {"image", "note", "labs"}
    for m, c in report["confidence"].items():
        assert {"ece", "auroc", "brier", "n"} <= set(c) and c["n"] > 0
        assert 0 <= c["ece"] <= 1 and c["exactly_0_or_1"] == 0
        assert 0 <= report["seed_sensitivity"][m] < 0.5
    assert {"ece", "brier"} <= set(report["probabilities"])
    assert 0.6 < report["assumed_values"]["labs"]["coverage"] < 0.95  # split-conformal 80 % intervals
    assert (tmp_path / "reliability.png").stat().st_size > 5000
    json.loads((tmp_path / "calibration.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
