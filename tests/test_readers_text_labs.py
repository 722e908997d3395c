"""Notes of any encoding, and lab tables mapped onto a catalogue with units and plausibility checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes

from core.data.cohort.scenario import LAB_CATALOGUE
from core.data.dataset import Dataset
from core.data.readers import read_labs, read_note
from core.data.readers.labs import labs_from_mapping
from core.data.spec import DatasetSpec, LabSpec, ModalitySpec
from core.errors import LabError, NoteError

CAT = list(LAB_CATALOGUE)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "latin-1", "cp1252"])
def test_note_encodings(encoding):
    text = "Pt c/o SOB, T 38.9 °C. Denies fever — café worker."
    if encoding in ("latin-1",):
        text = text.replace("—", "-")
    assert read_note(text.encode(encoding), name="n.txt") == text


@pytest.mark.parametrize("data, message", [(b"", "empty"), (b"   \n\t  ", "empty"), (b"12 34 56", "no words"),
                                           (bytes(range(256)) * 20, "binary")])
def test_bad_notes(data, message):
    with pytest.raises(NoteError, match=message):
        read_note(data, name="note.txt")


def test_long_note_is_kept_whole():
    text = "Pt reports cough. " * 20000
    assert len(read_note(text.encode())) == len(text.strip())


def test_long_and_wide_labs_with_units_and_aliases():
    long = b"name,value,unit\nHgb,135,g/L\nglucose,7.0,mmol/L\nCRP,12.5,mg/dL\nD-dimer,<0.27,mg/L FEU\nwbc,12 500,/uL\n"
    panel = read_labs(long, CAT, name="l.csv")  # '12 500' is not a number: that value alone is refused
    assert set(panel.refused) == {"wbc"} and "not a number" in panel.refused["wbc"] and len(panel) == 4
    long = long.replace(b"12 500", b"12500")
    panel = read_labs(long, CAT, name="l.csv")
    assert panel.values["hemoglobin"].value == pytest.approx(13.5)
    assert panel.values["glucose"].value == pytest.approx(7.0 * 18.016)
    assert panel.values["crp"].value == pytest.approx(125.0) and panel.values["crp"].flag == "H"
    assert panel.values["wbc"].value == pytest.approx(12.5)
    assert panel.values["d_dimer"].value == pytest.approx(0.27) and any("detection limit" in w for w in panel.warnings)
    wide = b"patient_id;Sodium (mmol/L);creatinine [umol/L];troponin\nMRN123;131;176.8;\n"
    panel = read_labs(wide, CAT, name="w.csv")
    assert panel.values["sodium"].flag == "L"
    assert panel.values["creatinine"].value == pytest.approx(2.0)
    assert "troponin" not in panel.values  # empty cell = not measured
    vec = panel.vector(CAT)
    assert np.isnan(vec).sum() == len(CAT) - 2


@pytest.mark.parametrize("csv, message", [
    (b"name,value,unit\nfoo,1,mg\n", ("none of the labs in this table is known to this model \\(ignored: 'foo'\\); "
                                        "known labs: wbc, crp")),
    (b"name,value,unit\nsodium,-4,mmol/L\n", "negative"),
    (b"name,value,unit\nsodium,1400,mmol/L\n", "outside the plausible range"),
    (b"name,value,unit\nglucose,5.5,furlongs\n", "unit 'furlongs' is not known"),
    (b"name,value,unit\ncrp,high,mg/L\n", "not a number"),
    (b"name,value,unit\nglucose,100,mg/dL\nglucose,9.9,mmol/L\n", "given twice"),
    (b"name,value,unit\ncrp,high,mg/L\nsodium,1400,mmol/L\n", "none of its values can be used \\(2 refused\\)"),
    (b"sodium,potassium\n140,4\n139,4.1\n", "one case per file"),
    (b"name,value,unit\n", "no lab values"),
])
def test_bad_lab_tables(csv, message):
    with pytest.raises(LabError, match=message) as e:
        read_labs(csv, CAT, name="labs.csv")
    assert "labs.csv" in str(e.value)


def test_each_bad_value_is_refused_alone_and_all_are_named_at_once():
    """A troponin in mg/dL and a D-dimer without its unit basis: those two refused, the ten others used."""
    rows = ["name,value,unit", "sodium,131,mmol/L", "potassium,4.1,mmol/L", "glucose,7.0,mmol/L", "wbc,12.5,10^9/L",
            "crp,8.5,mg/dL", "hemoglobin,13.5,g/dL", "creatinine,1.1,mg/dL", "lactate,1.9,mmol/L",
            "procalcitonin,0.3,ng/mL", "bnp,80,pg/mL", "troponin,0.5,mg/dL", "d_dimer,800,ng/mL"]
    panel = read_labs("\n".join(rows).encode(), CAT, name="labs.csv")
    assert set(panel.refused) == {"troponin", "d_dimer"} and len(panel) == 10
    assert panel.values["crp"].value == pytest.approx(85.0)  # the user's own value, converted, is kept
    refusal = [w for w in panel.warnings if "refused" in w]
    assert len(refusal) == 1 and "troponin" in refusal[0] and "D-dimer" in refusal[0] and "other 10 labs" in refusal[0]
    table = panel.table(CAT)
    assert table.loc["troponin", "Value"] == "refused" and table.loc["crp", "Value"] == "85"
    assert table.loc["troponin", "As given"].startswith("unit 'mg/dL' is not known")  # the row names the lab
    with pytest.raises(LabError, match="2 values cannot be used") as e:  # training data: one error naming both
        read_labs("\n".join(rows).encode(), CAT, name="labs.csv", unknown="error")
    assert set(e.value.refused) == {"troponin", "d_dimer"}


def test_mixed_units_that_agree_are_accepted():
    panel = read_labs(b"name,value,unit\nglucose,108,mg/dL\nglucose,6.0,mmol/L\n", CAT, name="m.csv")
    assert panel.values["glucose"].value == pytest.approx(108, rel=0.01)


def test_nan_values_are_missing_and_unknown_names_warn():
    panel = labs_from_mapping({"sodium": float("nan"), "potassium": 4.0, "mystery": 3}, CAT)
    assert set(panel.values) == {"potassium"} and "mystery" in panel.warnings[0]
    with pytest.raises(LabError, match="unknown lab\\(s\\) 'mystery'; known labs: wbc"):
        labs_from_mapping({"potassium": 4.0, "mystery": 3}, CAT, unknown="error")


def test_unknown_labs_are_ignored_and_named_the_rest_used():
    long = b"name,value,unit\nFerritin,250,ng/mL\nsodium,131,mmol/L\nVitamin D,30,ng/mL\n"
    panel = read_labs(long, CAT, name="labs.csv")
    assert set(panel.values) == {"sodium"} and panel.values["sodium"].flag == "L"
    known = ", ".join(lab.name for lab in CAT)
    assert panel.warnings == [f"ignored unknown lab(s) 'Ferritin', 'Vitamin D' (this model knows: {known})"]
    # wide form; identifier columns are dropped silently, not reported as unknown labs
    panel = read_labs(b"patient_id,date,crp (mg/L),ferritin\nMRN123,2024-01-02,80,250\n", CAT, name="w.csv")
    assert set(panel.values) == {"crp"} and len(panel.warnings) == 1
    assert "'ferritin'" in panel.warnings[0] and "MRN123" not in panel.warnings[0]
    assert "patient_id" not in panel.warnings[0] and "date" not in panel.warnings[0]


def test_a_table_with_no_known_lab_is_refused():
    with pytest.raises(LabError, match="w.csv: none of the labs in this table is known to this model "
                                       "\\(ignored: 'ferritin', 'ldl'\\); known labs: wbc, crp") as e:
        read_labs(b"patient_id,ferritin,ldl\nMRN123,250,3.1\n", CAT, name="w.csv")
    assert "MRN123" not in str(e.value)
    # a known name whose value is missing still counts as this model's table: an empty panel, no error
    panel = read_labs(b"name,value,unit\nferritin,250,ng/mL\ncrp,,mg/L\n", CAT, name="l.csv")
    assert len(panel) == 0 and "'ferritin'" in panel.warnings[0]


def test_a_data_sets_lab_files_stay_strict_about_names(tmp_path):
    """Training data with a name outside the spec's catalogue means a wrong spec: refused, not ignored."""
    (tmp_path / "labs").mkdir()
    (tmp_path / "labs/a.csv").write_text("name,value,unit\nsodium,140,mmol/L\n")
    (tmp_path / "labs/b.csv").write_text("name,value,unit\nsodium,138,mmol/L\nferritin,250,ng/mL\n")
    pd.DataFrame({"case_id": ["a", "b"], "labs": ["labs/a.csv", "labs/b.csv"], "label": ["x", "y"],
                  "split": ["train", "test"]}).to_csv(tmp_path / "manifest.csv", index=False)
    spec = DatasetSpec(name="strict", label="label", split="split", labs=CAT,
                       modalities=[ModalitySpec("labs", "tabular", column="labs")])
    spec.save(tmp_path / "spec.yaml")
    ds = Dataset.open(tmp_path)
    assert ds.load(0).inputs["labs"].values["sodium"].value == 140
    with pytest.raises(LabError, match="b.csv: unknown lab\\(s\\) 'ferritin'; known labs"):
        ds.load(1)


def test_diabetes_table_as_inline_labs_through_a_manifest(tmp_path):
    """scikit-learn's real diabetes data (442 patients) as bring-your-own tabular data."""
    data = load_diabetes(scaled=False, as_frame=True).frame
    data.insert(0, "case_id", [f"P{i}" for i in range(len(data))])
    data["label"] = np.where(data.target > data.target.median(), "progressed", "stable")
    data.to_csv(tmp_path / "manifest.csv", index=False)
    labs = [LabSpec("age", "Age", "years", (None, None), (0, 120)),
            LabSpec("bmi", "Body mass index", "kg/m2", (18.5, 25), (10, 80)),
            LabSpec("bp", "Mean arterial pressure", "mmHg", (70, 100), (30, 250)),
            LabSpec("s1", "Total cholesterol", "mg/dL", (None, 200), (50, 600), ("tc",), {"mmol/L": (38.67, 0.0)}),
            LabSpec("s6", "Glucose", "mg/dL", (70, 100), (10, 2000), ("glu",))]
    spec = DatasetSpec(name="diabetes", label="label", modalities=[
        ModalitySpec("labs", "tabular", columns=("age", "bmi", "bp", "s1", "s6"))], labs=labs)
    spec.save(tmp_path / "spec.yaml")
    ds = Dataset.open(tmp_path)
    assert len(ds) == 442 and ds.classes == ["progressed", "stable"]
    assert {len(ds.indices(s)) for s in ("train", "val", "test")} <= set(range(60, 320))
    case = ds.load(0)
    assert case.inputs["labs"].values["bmi"].value == pytest.approx(data.bmi[0])
    assert case.inputs["labs"].values["s6"].value == pytest.approx(data.s6[0])


def test_lab_preview_after_an_upload_shows_conversions_flags_and_no_none():
    """Issue 15: right after an upload, the labs as the model takes them, with what was written when a unit
    was converted, the reference range and a flag; unmeasured labs in words, never None or NaN."""
    upload = (b"Name,Result,Units\n"
              b"Blood glucose,7.0,mmol/L\n"      # converted: 7.0 mmol/L = 126.1 mg/dL, in range
              b"Creat,176.8,umol/L\n"            # converted and out of range: 2.0 mg/dL > 1.2
              b"Na,131,mmol/L\n"                 # canonical unit, below range
              b"BNP,12000,pg/mL\n"               # large: no exponent form
              b"D-dimer,<0.27,mg/L FEU\n"        # qualified: shown as written
              b"troponin,,ng/L\n")               # an empty cell: not measured
    panel = read_labs(upload, CAT, name="labs.csv")
    table = panel.table(CAT)
    assert list(table.columns) == ["Lab", "Value", "Unit", "Reference", "Flag", "As given"]
    assert list(table.index) == [lab.name for lab in CAT]  # every catalogue lab, in catalogue order
    glucose, creatinine, sodium = table.loc["glucose"], table.loc["creatinine"], table.loc["sodium"]
    assert (glucose["Lab"], glucose["Value"], glucose["Unit"], glucose["Reference"], glucose["Flag"],
            glucose["As given"]) == ("Glucose", "126.1", "mg/dL", "70–140", "", "7.0 mmol/L")
    assert (creatinine["Value"], creatinine["Unit"], creatinine["Flag"], creatinine["As given"]) == \
        ("2", "mg/dL", "high", "176.8 umol/L")
    assert (sodium["Value"], sodium["Flag"], sodium["As given"]) == ("131", "low", "")  # no conversion: nothing
    assert table.loc["bnp", "Value"] == "12000" and table.loc["bnp", "Flag"] == "high"
    assert table.loc["d_dimer", "As given"].startswith("<0.27 mg/L FEU")
    for lab in ("troponin", "wbc", "spo2"):
        assert table.loc[lab, "Value"] == "not measured" and table.loc[lab, "Flag"] == ""
        assert table.loc[lab, "Reference"] == next(x for x in CAT if x.name == lab).ref_text()
    cells = table.to_numpy().ravel()
    assert all(isinstance(c, str) for c in cells)  # text only: a data frame view cannot show None or NaN
    assert not {"None", "nan", "NaN"} & {c for c in cells}

    measured = panel.table(CAT, measured_only=True)
    assert list(measured.index) == ["bnp", "d_dimer", "sodium", "creatinine", "glucose"]
    assert measured.attrs["not_measured"] == len(CAT) - 5
    assert "not measured" not in measured["Value"].tolist()

    typed = labs_from_mapping({"glucose": 250.0}, CAT).table(CAT, measured_only=True)  # the app's lab editor
    assert typed.loc["glucose"].tolist() == ["Glucose", "250", "mg/dL", "70–140", "high", ""]


def test_inline_groups_without_features_each_claim_only_their_own_columns():
    """Three groups of one table: a group's catalogue is the labs its columns name, never another group's."""
    labs = [LabSpec(n, n.replace("_", " ").title(), "") for n in ("cd4_count", "weight", "age", "karnofsky")]
    spec = DatasetSpec(name="trial", label="label", labs=labs, modalities=[
        ModalitySpec("history", "tabular", columns=("Age", "karnofsky")),
        ModalitySpec("lab", "tabular", columns=("CD4 count",)),
        ModalitySpec("body", "tabular", columns=("weight",), features=("weight",))])
    assert [lab.name for lab in spec.lab_features("history")] == ["age", "karnofsky"]
    assert [lab.name for lab in spec.lab_features("lab")] == ["cd4_count"]
    assert [lab.name for lab in spec.lab_features("body")] == ["weight"]
