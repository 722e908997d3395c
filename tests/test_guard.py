"""The guard against inputs unlike the training data: the domain check from DICOM headers, the per-modality
out-of-distribution scores (fitted, stored in the checkpoint, reported by prediction, CLI and report), and
the display-independent model preprocessing. Real files: pydicom's test images, scikit-learn's photographs."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from core.checkpoint import GUARD, attach_guard, load_guard, read_meta
from core.data.readers import read_scan
from core.data.spec import DatasetSpec
from core.errors import CheckpointError, SpecError
from core.explain.explanation import explain_case
from core.explain.render import report_html
from core.guard.domain import DomainError, domain_mismatches
from core.guard.ood import FALSE_ALARM, Guard, LabGaussian, Subspace
from core.paths import DEFAULT_CHECKPOINT, ROOT

CT = get_testdata_file("CT_small.dcm")
US = get_testdata_file("examples_jpeg2k.dcm")  # ultrasound, burned-in annotation likely


def _photo() -> bytes:
    from sklearn.datasets import load_sample_image

    buf = io.BytesIO()
    Image.fromarray(load_sample_image("china.jpg")).save(buf, "PNG")
    return buf.getvalue()


# ---- domain check ---------------------------------------------------------------------------------------
def test_spec_expect_is_validated_and_round_trips():
    spec = DatasetSpec.from_dict({"label": "y", "modalities": [
        {"name": "cxr", "type": "image", "column": "p", "expect": {"modality": ["cr", "DX"], "body_part": "Chest"}}]})
    assert spec.modality("cxr").expect == {"modality": ("CR", "DX"), "body_part": ("CHEST",)}
    assert DatasetSpec.from_dict(spec.to_dict()).modality("cxr").expect == spec.modality("cxr").expect
    with pytest.raises(SpecError, match="unknown 'expect' keys"):
        DatasetSpec.from_dict({"label": "y", "modalities": [
            {"name": "cxr", "type": "image", "column": "p", "expect": {"manufacturer": ["X"]}}]})
    with pytest.raises(SpecError, match="image modalities only"):
        DatasetSpec.from_dict({"label": "y", "modalities": [
            {"name": "n", "type": "text", "column": "p", "expect": {"modality": ["CR"]}}]})


def test_domain_mismatch_names_the_tag_and_value(default_cohort):
    expect = {"modality": ("CR", "DX"), "body_part": ("CHEST",)}
    found = domain_mismatches(read_scan(CT), expect)
    assert any("Modality = 'CT'" in f for f in found), found
    mr = get_testdata_file("examples_overlay.dcm")  # an abdominal MR
    found = domain_mismatches(read_scan(mr), expect)
    assert any("BodyPartExamined = 'ABDOMEN'" in f for f in found) and any("'MR'" in f for f in found)
    # no header to contradict anything: the cohort's PNG radiographs
    assert domain_mismatches(read_scan(default_cohort / "images" / "RMD-00001.png"), expect) == []


def test_volume_contradicts_a_projection_radiograph_domain(tmp_path):
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((9, 32, 32), np.int16)), str(tmp_path / "v.nii.gz"))
    found = domain_mismatches(read_scan(tmp_path / "v.nii.gz"), {"modality": ("CR", "DX")})
    assert found and "3-D volume of 9 slices" in found[0]


def test_prediction_refuses_a_ct_unless_overridden_and_then_says_so(predictor):
    case = predictor.case(image=CT)
    with pytest.raises(DomainError, match="Modality = 'CT'"):
        predictor.predict(case)
    # switched off, the CT does not matter
    note = "EMERGENCY DEPT NOTE\nCC: chest pain\nHPI: 70 yo M with dyspnea."
    both = predictor.case(image=CT, note=note)
    assert predictor.predict(both, absent=["image"]).domain == []
    pred = predictor.predict(case, allow_domain_mismatch=True)
    assert pred.outside_training and any("Modality = 'CT'" in d for d in pred.domain)
    assert pred.ood["image"]["flagged"], pred.ood
    out = pred.to_dict()
    assert out["outside_training"] is True and set(out["ood"]["image"]) == {"score", "threshold", "flagged", "reason"}
    with pytest.raises(DomainError):
        explain_case(predictor, case, method="gradient_x_input")


# ---- out-of-distribution scores -------------------------------------------------------------------------
def test_subspace_scores_typical_inputs_near_one_and_shifted_ones_higher():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 2000)
    centres = rng.normal(0, 3, (3, 50))
    x = centres[y] + rng.normal(0, 1, (2000, 50))
    model = Subspace.fit(x, y)
    held = centres[y[:300]] + rng.normal(0, 1, (300, 50))
    typical = model.score(held)
    assert 0.8 < np.median(typical) < 1.2
    assert np.all(model.score(held + 4.0) > np.quantile(typical, 0.99))


def test_lab_gaussian_scores_partial_panels_and_flags_impossible_combinations():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 1500)
    x = np.exp(rng.normal(y[:, None] * 1.0, 0.3, (1500, 4)))  # skewed markers, class-shifted
    x[rng.random(x.shape) < 0.3] = np.nan  # labs not measured
    model = LabGaussian.fit(x, y, np.array([True] * 4))
    s = model.score(np.array([[np.nan] * 4, [1.0, np.nan, np.nan, np.nan], [1.0, 1.1, 0.9, 1.0]]))
    assert np.isnan(s[0]) and np.isfinite(s[1:]).all()
    ordinary = model.score(x[:200])
    odd = model.score(np.array([[np.exp(3.0), 1.0, 1.0, 1.0]]))  # one marker 10 SD off, the rest class-0 typical
    assert odd[0] > np.nanquantile(ordinary, 0.99)


def test_a_lab_never_measured_in_fitting_is_left_out_of_scores_without_warnings():
    """A lab no fitting case measured (a rare lab, or one fold of the cross-fitting without it) has no typical
    value: scores ignore it (they neither explode nor turn NaN), and numpy never warns about empty slices."""
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 600)
    x = np.exp(rng.normal(y[:, None] * 0.8, 0.3, (600, 3)))
    x[:, 2] = np.nan  # never measured
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = LabGaussian.fit(x, y, np.array([True] * 3))
        with_lab = model.score(np.array([[1.0, 1.0, 5000.0]]))
        without = model.score(np.array([[1.0, 1.0, np.nan]]))
        only_it = model.score(np.array([[np.nan, np.nan, 5000.0]]))
    assert np.isfinite(with_lab).all() and with_lab[0] == pytest.approx(without[0]) and np.isnan(only_it[0])


def test_shipped_guard_holds_on_the_test_split_and_round_trips(predictor, test_split, test_split_features):
    """The guard that training fitted at a 1 % false-alarm rate (training and validation cases), scored here
    on the test cases encoded on this machine rather than read from its record."""
    guard, table, rows = predictor.guard, test_split_features, test_split.indices("test")
    assert set(guard.thresholds) == {"image", "note", "labs"}
    # the threshold is the 99th percentile of validation and cross-fitted training scores together
    assert max(guard.val_flagged.values()) <= 3 * FALSE_ALARM
    for m, rate in guard.flag_rates(table, rows).items():
        assert rate <= 4 * FALSE_ALARM, (m, rate)  # target ≤ 2 % (BENCHMARKS.md); 4 % leaves sampling noise
    # storage round trip gives the same scores
    again = Guard.from_storage(json.loads(json.dumps(guard.describe())), guard.tensors())
    for m, s in guard.scores(table, rows[:50]).items():
        np.testing.assert_allclose(again.scores(table, rows[:50])[m], s, rtol=1e-9, equal_nan=True)


def test_shipped_checkpoint_carries_its_guard_and_flags_what_is_not_from_the_cohort(predictor, default_cohort):
    meta = read_meta(DEFAULT_CHECKPOINT)
    # target ≤ 2 % (BENCHMARKS.md: 2.3 % for the image on the issue-25 checkpoint, not met); 4 % leaves sampling noise
    assert (DEFAULT_CHECKPOINT / GUARD).exists() and max(meta["guard"]["test_flagged"].values()) <= 4 * FALSE_ALARM
    assert predictor.guard is not None
    photo = predictor.predict(predictor.case(image=_photo()))
    assert photo.ood["image"]["flagged"] and photo.outside_training and "unlike every training scan" in photo.ood["image"]["reason"]
    recipe = predictor.predict(predictor.case(note="Preheat the oven to 180 C. Cream butter and sugar, add eggs, "
                                                   "fold in the flour and bake for 25 minutes."))
    assert recipe.ood["note"]["flagged"]
    weird_labs = predictor.predict(predictor.case(labs=b"name,value,unit\nsodium,98,mmol/L\nhemoglobin,23,g/dL\n"
                                                       b"potassium,9.1,mmol/L\nglucose,1500,mg/dL\n"))
    assert weird_labs.ood["labs"]["flagged"] and "SD" in weird_labs.ood["labs"]["reason"]
    cohort = predictor.predict(predictor.case(image=default_cohort / "images" / "RMD-00001.png"))
    assert not cohort.domain and set(cohort.ood) == {"image"}


def test_tampered_guard_is_refused_reattached_and_an_old_checkpoint_predicts_without_ood(quick_checkpoint, tmp_path,
                                                                                          default_cohort):
    import shutil

    from core.checkpoint import write_meta
    from core.inference import Predictor

    folder = tmp_path / "ckpt"
    shutil.copytree(quick_checkpoint, folder)
    meta = read_meta(folder)
    guard = load_guard(folder, meta)
    assert guard is not None
    (folder / GUARD).write_bytes((folder / GUARD).read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="guard.safetensors"):
        Predictor.load(folder)
    attach_guard(folder, guard)
    assert Predictor.load(folder).guard is not None
    meta = read_meta(folder)
    del meta["guard"]  # as saved before guards existed
    write_meta(folder, meta)
    old = Predictor.load(folder)
    pred = old.predict(old.case(image=default_cohort / "images" / "RMD-00001.png"))
    assert old.guard is None and pred.ood == {} and not pred.outside_training


# ---- model preprocessing independent of the display -----------------------------------------------------
def test_model_input_ignores_the_display_window(predictor, default_cohort):
    scan = read_scan(get_testdata_file("CT_small.dcm"))
    a = scan.view().model_input(128)
    scan.display((40.0, 10.0))  # a narrow display window, as a user might choose
    np.testing.assert_array_equal(scan.view().model_input(128), a)
    case = predictor.case(image=scan)
    p1 = predictor.predict(case, allow_domain_mismatch=True).probabilities
    p2 = predictor.predict(predictor.case(image=scan.view()), allow_domain_mismatch=True).probabilities
    assert p1 == p2


# ---- report and CLI -------------------------------------------------------------------------------------
def test_report_carries_the_banner_and_leaves_annotated_pixels_out(predictor, default_cohort):
    case = predictor.case(image=US, note=(default_cohort / "notes" / "RMD-00001.txt").read_text())
    assert case.inputs["image"].pixel_identifiers
    exp = explain_case(predictor, case, method="gradient_x_input", allow_domain_mismatch=True)
    html = report_html(exp, case.inputs)
    assert "Outside what this model was trained on" in html and "Modality = &#x27;US&#x27;" in html
    assert "data:image/png" not in html and "Left out of this report" in html
    assert "data:image/png" in report_html(exp, case.inputs, include_annotated=True)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_cli_refuses_then_warns_and_reports_ood_in_json():
    refused = _cli("predict", "--image", CT)
    assert refused.returncode == 2 and "Modality = 'CT'" in refused.stderr and "--allow-domain-mismatch" in refused.stderr
    done = _cli("predict", "--image", CT, "--allow-domain-mismatch", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["ood"]["image"]["flagged"] is True and out["outside_training"] is True
    assert "warning: outside what this model was trained on" in done.stderr
