"""Dataset spec and manifest: the path every data set takes, with clear errors for bad ones."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.data.dataset import Dataset, stable_split
from core.data.readers import LabPanel, Scan
from core.data.spec import DatasetSpec
from core.errors import ManifestError, SpecError
from core.paths import ROOT


def test_cohort_loads_through_the_manifest(small_cohort):
    ds = Dataset.open(small_cohort)
    assert ds.spec.modality_names == ["image", "note", "labs"]
    i = int(np.flatnonzero(ds.presence().all(axis=1))[0])
    case = ds.load(i)
    assert isinstance(case.inputs["image"], Scan) and isinstance(case.inputs["note"], str)
    assert isinstance(case.inputs["labs"], LabPanel) and len(case.inputs["labs"]) > 5
    assert case.label in ds.classes
    assert len(ds.fingerprint()) == 64


def test_spec_round_trip(small_cohort, tmp_path):
    spec = DatasetSpec.load(small_cohort / "spec.yaml")
    spec.save(tmp_path / "spec.yaml")
    again = DatasetSpec.load(tmp_path / "spec.yaml")
    assert again.to_dict() == spec.to_dict()
    assert again.labs[0].conversion("/uL") == (0.001, 0.0)


@pytest.mark.parametrize("text, message", [
    ("label: y\n", "missing required keys"),
    ("label: y\nmodalities: []\n", "no modalities"),
    ("label: y\nmodalities: [{name: a, type: video, column: a}]\n", "has type 'video'"),
    ("label: y\nmodalities: [{name: a, type: image}]\n", "needs a 'column'"),
    ("label: y\nmodalities: [{name: a, type: image, column: p}]\ncolour: blue\n", "unknown keys"),
    ("label: [y\n", "not valid YAML"),
])
def test_bad_specs(tmp_path, text, message):
    (tmp_path / "spec.yaml").write_text(text)
    with pytest.raises(SpecError, match=message):
        DatasetSpec.load(tmp_path / "spec.yaml")


def _two_image_dataset(tmp_path, fmt="csv"):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        for view in ("pa", "lat"):
            Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(tmp_path / f"{i}_{view}.png")
        rows.append({"id": f"c{i}", "y": "a" if i % 2 else "b", "pa": f"{i}_pa.png", "lat": f"{i}_lat.png" if i % 3 else ""})
    df = pd.DataFrame(rows)
    if fmt == "parquet":
        df.to_parquet(tmp_path / "manifest.parquet")
    else:
        df.to_csv(tmp_path / "manifest.csv", index=False)
    (tmp_path / "spec.yaml").write_text("label: y\ncase_id: id\nmodalities:\n  - {name: pa, type: image, column: pa}\n"
                                        "  - {name: lat, type: image, column: lat}\n")
    return tmp_path


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_two_image_modalities_and_parquet(tmp_path, fmt):
    ds = Dataset.open(_two_image_dataset(tmp_path, fmt))
    assert ds.spec.modality_names == ["pa", "lat"]
    pres = ds.presence()
    assert pres[:, 0].all() and pres[:, 1].sum() == 26
    assert ds.load(0).inputs["lat"] is None and isinstance(ds.load(1).inputs["lat"], Scan)


def test_manifest_errors(tmp_path):
    _two_image_dataset(tmp_path)
    df = pd.read_csv(tmp_path / "manifest.csv")
    df.drop(columns=["lat"]).to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(ManifestError, match=r"missing column\(s\) \['lat'\]"):
        Dataset.open(tmp_path)
    df.assign(y="").to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(ManifestError, match="without a label"):
        Dataset.open(tmp_path)
    with pytest.raises(ManifestError, match="does not exist"):
        Dataset.open(tmp_path / "nope")


def test_stable_split_is_stratified_and_stable():
    ids = pd.Series([f"id{i}" for i in range(200)])
    labels = pd.Series(["a"] * 150 + ["b"] * 50)
    s1 = stable_split(ids, labels)
    s2 = stable_split(ids[::-1].reset_index(drop=True), labels[::-1].reset_index(drop=True))
    assert list(s1) == list(s2[::-1])
    b = list(s1[150:])
    assert (b.count("train"), b.count("val"), b.count("test")) == (35, 8, 7)


def _tabular_study(folder, patients: list[str], splits: list[str] | None = None):
    """A small inline-tabular data set with a patient column (and a split column when given)."""
    folder.mkdir()
    n = len(patients)
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"case_id": [f"c{i}" for i in range(n)], "patient": patients,
                       "y": ["a" if i % 3 else "b" for i in range(n)], "wbc": rng.uniform(4, 11, n).round(1)})
    spec = {"label": "y", "group": "patient", "modalities": [{"name": "labs", "type": "tabular", "columns": ["wbc"]}],
            "labs": [{"name": "wbc", "unit": "10^9/L"}]}
    if splits is not None:
        df["split"], spec["split"] = splits, "split"
    df.to_csv(folder / "manifest.csv", index=False)
    DatasetSpec.from_dict(spec).save(folder / "spec.yaml")
    return folder


def test_a_patient_never_spans_two_splits(tmp_path):
    patients = [f"p{i // 3}" for i in range(240)]  # three cases per patient
    ds = Dataset.open(_tabular_study(tmp_path / "by_patient", patients))
    assert ds.groups_across_splits() == {}
    assert set(ds.splits) == {"train", "val", "test"}
    assert pd.Series(ds.splits).value_counts()["train"] == pytest.approx(0.7 * 240, abs=12)
    # without a group key, a case is its own group: the split is the one by case id
    ids = pd.Series([f"c{i}" for i in range(240)])
    assert list(stable_split(ids, pd.Series(ds.classes[k] for k in ds.labels))) != list(ds.splits)


def test_validate_reports_patients_across_a_manifest_split(tmp_path):
    from core.data.validate import validate

    patients = [f"p{i // 2}" for i in range(60)]
    splits = ["train", "test"] * 30  # each patient's two cases in train and test
    report = validate(_tabular_study(tmp_path / "leaky", patients, splits))
    assert not report["ok"] and report["groups_across_splits"] == 30
    assert any("span more than one split" in p and "p0 (test/train)" in p for p in report["problems"])
    ok = validate(_tabular_study(tmp_path / "clean", patients, [["train", "test"][i // 30] for i in range(60)]))
    assert ok["groups_across_splits"] == 0 and ok["groups"] == 30


def test_cli_help_and_cohort(tmp_path):
    out = subprocess.run([sys.executable, "-m", "core", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "cohort" in out.stdout
    out = subprocess.run([sys.executable, "-m", "core", "cohort", "--out", str(tmp_path / "c"), "--n", "60",
                          "--no-card", "--workers", "1"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert len(pd.read_csv(tmp_path / "c" / "manifest.csv")) == 60


def test_a_spec_of_another_name_is_named_and_found_again(tmp_path):
    from core.data.dataset import recorded_source, resolve_source
    from core.errors import InputError

    folder = _tabular_study(tmp_path / "own", [f"p{i}" for i in range(30)])
    (folder / "spec.yaml").rename(folder / "study.yaml")
    with pytest.raises(ManifestError) as e:  # the names searched, the file that is there, and the option
        Dataset.open(folder)
    assert "spec.yaml" in str(e.value) and "dataset.yaml" in str(e.value) and "study.yaml" in str(e.value)
    assert "--spec FILE" in str(e.value)
    ds = Dataset.open(folder, spec=folder / "study.yaml")
    assert ds.spec.modality_names == ["labs"] and len(ds) == 30
    assert Dataset.open(folder, spec="study.yaml").fingerprint() == ds.fingerprint()  # a name within the folder
    recorded = ds.source()
    assert recorded["spec"] == str((folder / "study.yaml").resolve())
    # what a checkpoint records finds the spec again, in the folder named or (no folder named) where it was
    assert resolve_source(folder, None, recorded) == folder / "study.yaml"
    assert resolve_source(None, None, recorded) is None and recorded_source(recorded) == folder / "study.yaml"
    assert resolve_source(folder, None, None) == folder  # without a record: the folder, and the error above
    elsewhere = _tabular_study(tmp_path / "other", [f"p{i}" for i in range(30)])
    with pytest.raises(InputError, match="must lie in the data folder"):
        resolve_source(elsewhere, folder / "study.yaml")
    with pytest.raises(InputError, match="is not a file"):
        resolve_source(folder, "nosuch.yaml")
    (folder / "study.yaml").rename(folder / "dataset.yaml")  # dataset.yaml is one of the names searched
    assert Dataset.open(folder).fingerprint() == ds.fingerprint()
    assert recorded_source(recorded) is None  # moved away: nothing recorded is used
