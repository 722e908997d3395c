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
from core.prediction import NEXT_TEST_RULES
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


def test_a_refused_lab_is_named_as_refused_never_assumed_and_which_test_next_follows_the_checkpoints_rule(
        quick_checkpoint, small_cohort):
    """Labs whose every value was refused are synthesized; the labs the user gave are not shown as assumed.
    'Which test next' names the first of the checkpoint's chosen rule only where it beat chance on test views;
    otherwise it lists the chance the page's table shows for each."""
    predictor = Predictor.load(quick_checkpoint)
    ds = Dataset.open(small_cohort)
    row = int(np.flatnonzero([ds.load(i).inputs["note"] is not None for i in range(40)])[0])
    case = ds.load(row)
    case.inputs.update(labs=None, image=None)
    case.refused["labs"] = {"troponin": "unit 'mg/dL' is not known", "crp": "not a number"}
    result = predictor.predict(case)
    syn = result.synthesized["labs"]
    assert set(syn["refused"]) == {"troponin", "crp"} and not {"troponin", "crp"} & set(syn["expected_values"])
    text = result.assumed_text("labs", top=20)
    assert "C-reactive protein" in text.split("refused")[1] and "C-reactive protein" not in text.split("refused")[0]
    chances = {m: result.chance_of_change(m) for m in result.synthesized}
    assert set(chances) == {"image", "labs"} and 0 <= syn["decision_change"] <= 1
    recorded, text = predictor.meta["calibration"]["next_test"], result.next_test_text()
    assert result.next_test_evidence["rule"] == recorded["chosen_rule"] in NEXT_TEST_RULES
    if recorded["above_chance"]:
        assert result.next_test == max(chances, key=result.next_test_score)
        assert f"{chances[result.next_test]:.0%} chance" in text
    else:
        assert result.next_test is None and all(f"{m} {c:.0%}" in text for m, c in chances.items())


def test_a_synthesized_notes_implied_concepts_agree_with_the_predicted_class_for_every_class(quick_checkpoint,
                                                                                            small_cohort):
    predictor = Predictor.load(quick_checkpoint)
    ids = predictor.meta["concept_ids"]
    linked = predictor.class_concepts()
    assert set(linked) == set(predictor.classes)
    rng = np.random.default_rng(0)
    for c in predictor.classes:
        lift = rng.normal(size=len(ids))
        shown = [x["concept"].replace(" ", "_") for x in predictor.implied_concepts(lift, c)]
        assert shown and set(shown) <= linked[c], c  # only what the graph links to the class
        assert [lift[ids.index(x)] for x in shown] == sorted((lift[ids.index(x)] for x in shown), reverse=True)
        others = np.array([-1.0 if i in linked[c] else 1.0 for i in ids])
        assert predictor.implied_concepts(others, c) == []  # nothing agrees: nothing is implied
    ds = Dataset.open(small_cohort)
    rows = [i for i in np.flatnonzero(ds.splits == "test")[:40] if ds.load(i).inputs["note"] is not None][:12]
    for result in predictor.predict_many([ds.load(i) for i in rows], absent=["note"]):
        implied = {x["concept"].replace(" ", "_") for x in result.synthesized["note"]["implied_concepts"]}
        assert implied <= linked[result.prediction], (result.prediction, implied)


def test_assumed_values_stay_ordered_when_clipped_to_the_plausible_range():
    from core.data.spec import LabSpec
    from core.inference import _assumed_value

    weight = LabSpec("weight", "Weight", "kg", plausible=(20.0, 300.0))
    for median, low, high in [(0.0, -5.0, 2.18), (80.0, 60.0, 100.0), (400.0, 350.0, 500.0), (25.0, 10.0, 24.0)]:
        v = _assumed_value(weight, median, low, high)
        assert 20.0 <= v["low"] <= v["median"] <= v["high"] <= 300.0, (median, low, high, v)


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
    # which test next: chosen on the validation views, as training's calibration measured them; intervals on test
    nt, fitted = report["next_test"], json.loads((quick_checkpoint / "meta.json").read_text())["calibration_fit"]["next_test"]
    assert nt["chosen_rule"] in NEXT_TEST_RULES and nt["validation"]["n_views"] == fitted["n_views"] > 0
    for rule, v in nt["test"].items():
        assert v["interval"][0] <= v["agreement"] <= v["interval"][1]
        assert nt["validation"]["top1_agreement"][rule] == pytest.approx(fitted["top1_agreement"][rule], abs=0.02)
    assert nt["above_chance"] == (nt["test"][nt["chosen_rule"]]["interval"][0] > nt["top1_chance"])
    json.loads((tmp_path / "calibration.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
