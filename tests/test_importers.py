"""Importers of public dataset layouts (core/data/importers): MIMIC-CXR-JPG + MIMIC-IV hosp + MIMIC-IV-Note, and
Derm7pt. The fixtures are written here in the published layouts (folder layout, file names, column names) with
made-up values: no real patient data."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.cli import main
from core.data.dataset import Dataset
from core.data.importers.derm7pt import diagnosis_class, import_derm7pt
from core.data.importers.mimic import CHEXPERT_COLUMNS, chexpert_labels, import_mimic, study_times
from core.data.importers.mimic_notes import strip_report
from core.data.spec import DatasetSpec
from core.paths import ROOT
from own_models import DIAGNOSES, LOCATIONS, write_derm7pt

# ---- a MIMIC fixture ------------------------------------------------------------------------------------------------
# 48 studies, two per subject: study k has class CLASS_OF[k % 6]; subject j = k // 2 holds classes of one pair,
# and its split (by j // 3) puts 4 studies of every class in train, 2 in validate, 2 in test. Then special studies.
CLASS_OF = ["pneumothorax", "pneumonia", "edema", "pleural_effusion", "other_finding", "no_finding"]
FINDING_OF = {"pneumothorax": "Pneumothorax", "pneumonia": "Pneumonia", "edema": "Edema",
              "pleural_effusion": "Pleural Effusion", "other_finding": "Atelectasis", "no_finding": "No Finding"}
WORDS_OF = {"pneumothorax": "a small apical pneumothorax", "pneumonia": "a right lower lobe consolidation",
            "edema": "interstitial edema and vascular congestion", "pleural_effusion": "a layering left effusion",
            "other_finding": "bibasilar atelectasis", "no_finding": "clear lungs"}
N = 48
UNLABELLED, UNCERTAIN = 48, 49  # study indices of the two extra studies
METADATA_COLUMNS = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
                    "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"]
LABEVENT_COLUMNS = ["labevent_id", "subject_id", "hadm_id", "specimen_id", "itemid", "order_provider_id", "charttime",
                    "storetime", "value", "valuenum", "valueuom", "ref_range_lower", "ref_range_upper", "flag",
                    "priority", "comments"]


def subject_of(k: int) -> int:
    return 10000100 + k // 2 if k < N else 10000900 + k


def study_of(k: int) -> int:
    return 50000000 + 1000 * k + 7


def split_of(k: int) -> str:
    if k >= N:
        return "train"
    group = (k // 2) // 3
    return "train" if group < 4 else "validate" if group < 6 else "test"


def time_of(k: int) -> datetime:
    """Study 13 is at 00:45:20, which the metadata writes as StudyTime 4520.531."""
    clock = timedelta(minutes=45, seconds=20) if k == 13 else timedelta(hours=9 + k % 12, minutes=k, seconds=20)
    return datetime(2180, 1, 1) + timedelta(days=10 * k) + clock


def dicom(k: int, view: str) -> str:
    h = hashlib.sha256(f"{k}-{view}".encode()).hexdigest()
    return "-".join(h[i:i + 8] for i in range(0, 40, 8))


def views_of(k: int) -> list[str]:
    """Every study has a PA and a lateral, except: 2 has AP and PA (the AP's id sorts first), 3 only AP, 4 only
    a lateral (no frontal image)."""
    if k == 2:
        return ["AP", "PA", "LATERAL"]
    if k == 3:
        return ["AP", "LL"]
    if k == 4:
        return ["LATERAL"]
    return ["PA", "LATERAL"]


def dicom_for(k: int, view: str) -> str:
    d = dicom(k, view)
    return ("0" + d[1:]) if (k == 2 and view == "AP") else d  # make the AP's id the smallest


def chexpert_row(k: int) -> dict:
    row = {c: np.nan for c in CHEXPERT_COLUMNS}
    if k == UNLABELLED:
        row["Support Devices"] = 1.0  # devices only: not a finding, no label
    elif k == UNCERTAIN:
        row.update({"Pneumonia": -1.0, "Edema": 1.0})
    else:
        cls = CLASS_OF[k % 6]
        row[FINDING_OF[cls]] = 1.0
        if cls != "no_finding":
            row["No Finding"] = np.nan
        if k == 0:
            row["Pneumonia"] = 1.0  # pneumothorax outranks pneumonia
        if k == 5:
            row["Support Devices"] = 1.0  # no finding, with a line in place
        if k == 7:
            row["Cardiomegaly"] = 0.0
    return {"subject_id": subject_of(k), "study_id": study_of(k), **row}


REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___ with cough and fever

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  ___

 FINDINGS:

 The study shows {words}. Heart size is stable.

 IMPRESSION:

 {words} IMPRESSIONSENTINEL

 NOTIFICATION:  The findings were discussed with Dr. ___ NOTIFYSENTINEL
"""


def _jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)).save(path, format="JPEG")


def write_mimic(root: Path) -> dict[str, Path]:
    cxr, hosp, note = root / "mimic-cxr-jpg", root / "mimiciv" / "hosp", root / "mimic-iv-note" / "note"
    for d in (cxr, hosp, note):
        d.mkdir(parents=True)
    ks = list(range(N)) + [UNLABELLED, UNCERTAIN]
    meta, split, labs, notes, detail = [], [], [], [], []
    for k in ks:
        subject, study, t = subject_of(k), study_of(k), time_of(k)
        study_time = float(t.strftime("%H%M%S")) + 0.531
        for view in views_of(k):
            d = dicom_for(k, view)
            meta.append({"dicom_id": d, "subject_id": subject, "study_id": study,
                         "PerformedProcedureStepDescription": "CHEST (PA AND LAT)", "ViewPosition": view,
                         "Rows": 3056, "Columns": 2544, "StudyDate": int(t.strftime("%Y%m%d")),
                         "StudyTime": study_time, "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
                         "ViewCodeSequence_CodeMeaning": "postero-anterior",
                         "PatientOrientationCodeSequence_CodeMeaning": "Erect"})
            split.append({"dicom_id": d, "study_id": study, "subject_id": subject, "split": split_of(k)})
            _jpeg(cxr / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}" / f"{d}.jpg", k)
        labs += lab_rows(k, t)
        notes_k, detail_k = note_rows(k, t)
        notes += notes_k
        detail += detail_k
    # study 6 has no MIMIC-IV-Note note but a MIMIC-CXR report file (an exact link), with a wet read before it
    s6 = cxr / "files" / f"p{str(subject_of(6))[:2]}" / f"p{subject_of(6)}" / f"s{study_of(6)}.txt"
    s6.write_text(" WET READ: ___ ___ 3:42 AM\n  pleural effusion WETSENTINEL\n\n"
                  + REPORT.format(words=WORDS_OF[CLASS_OF[0]]))
    pd.DataFrame(meta, columns=METADATA_COLUMNS).to_csv(cxr / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    pd.DataFrame([chexpert_row(k) for k in ks]).to_csv(cxr / "mimic-cxr-2.0.0-chexpert.csv.gz", index=False)
    pd.DataFrame(split).to_csv(cxr / "mimic-cxr-2.0.0-split.csv.gz", index=False)
    events = pd.DataFrame(labs)
    events.insert(0, "labevent_id", range(1, len(events) + 1))
    for c in LABEVENT_COLUMNS:
        if c not in events:
            events[c] = np.nan
    events["priority"] = "ROUTINE"
    events[LABEVENT_COLUMNS].to_csv(hosp / "labevents.csv.gz", index=False)
    pd.DataFrame([(51301, "White Blood Cells", "Blood", "Hematology"), (50983, "Sodium", "Blood", "Chemistry"),
                  (50824, "Sodium, Whole Blood", "Blood", "Blood Gas"), (51003, "Troponin T", "Blood", "Chemistry"),
                  (51237, "INR(PT)", "Blood", "Hematology")],
                 columns=["itemid", "label", "fluid", "category"]).to_csv(hosp / "d_labitems.csv.gz", index=False)
    with gzip.open(note / "radiology.csv.gz", "wt") as f:  # written through gzip by hand: the reader must not care
        pd.DataFrame(notes, columns=["note_id", "subject_id", "hadm_id", "note_type", "note_seq", "charttime",
                                     "storetime", "text"]).to_csv(f, index=False)
    pd.DataFrame(detail, columns=["note_id", "subject_id", "field_name", "field_value", "field_ordinal"]).to_csv(
        note / "radiology_detail.csv", index=False)
    return {"cxr": cxr, "hosp": root / "mimiciv", "note": root / "mimic-iv-note"}


def lab_rows(k: int, t: datetime) -> list[dict]:
    """WBC 2 h before (depends on the class, for a little signal), sodium 131 at 10 h before, 150 at 30 h before
    (outside the 24 h window) and 160 after the study; INR (not in the catalogue). Study 0: a troponin '<0.01'
    without valuenum; 5: everything 30 h before; 7: a blood-gas sodium at the same time as the chemistry one;
    8: a WBC with a unit nobody knows, 1 h before."""
    s = subject_of(k)

    def row(itemid, hours, value, unit, valuenum=True):
        when = (t + timedelta(hours=hours)).strftime("%Y-%m-%d %H:%M:%S")
        return {"subject_id": s, "hadm_id": 20000000 + k, "specimen_id": 30000000 + k * 10 + abs(hours), "itemid": itemid,
                "charttime": when, "storetime": when, "value": str(value),
                "valuenum": value if valuenum else np.nan, "valueuom": unit}

    shift = -30 if k == 5 else 0
    wbc = 7.0 + (6.0 if CLASS_OF[k % 6] == "pneumonia" else 0.0) + (k % 3) * 0.1
    rows = [row(51301, -2 + shift, wbc, "K/uL"), row(50983, -10 + shift, 131, "mEq/L"), row(50983, -30, 150, "mEq/L"),
            row(50983, 1, 160, "mEq/L"), row(51237, -1, 1.1, np.nan)]
    if k == 0:
        rows.append(row(51003, -3, "<0.01", "ng/mL", valuenum=False))
    if k == 7:
        rows.append(row(50824, -10, 133, "mEq/L"))
    if k == 8:
        rows.append(row(51301, -1, 99, "bananas"))
    return rows


def note_rows(k: int, t: datetime) -> tuple[list[dict], list[dict]]:
    """The study's chest radiograph report 30 min after it, with its exam name in radiology_detail. Study 6: none
    (its report is a MIMIC-CXR file); 9: charted 20 h late (outside the 12 h window); 10: also a chest CT 5 min
    after the study (nearer, but not a radiograph); 11: also an addendum 1 min after the study."""
    s = subject_of(k)
    cls = CLASS_OF[k % 6] if k < N else "edema"
    notes, detail = [], []

    def add(seq, minutes, text, exam, note_type="RR"):
        note_id = f"{s}-{note_type}-{k * 10 + seq}"
        when = (t + timedelta(minutes=minutes)).strftime("%Y-%m-%d %H:%M:%S")
        notes.append({"note_id": note_id, "subject_id": s, "hadm_id": 20000000 + k, "note_type": note_type,
                      "note_seq": k * 10 + seq, "charttime": when, "storetime": when, "text": text})
        detail.append({"note_id": note_id, "subject_id": s, "field_name": "exam_name", "field_value": exam,
                       "field_ordinal": 1})
        detail.append({"note_id": note_id, "subject_id": s, "field_name": "cpt_code", "field_value": "71046",
                       "field_ordinal": 1})

    if k == 6:
        return notes, detail
    add(1, 20 * 60 if k == 9 else 30, REPORT.format(words=WORDS_OF[cls]), "CHEST (PA AND LAT)")
    if k == 10:
        add(2, 5, "FINDINGS: CTSENTINEL nodules.\nIMPRESSION: nodules.", "CT CHEST W/O CONTRAST")
    if k == 11:
        add(3, 1, "ADDENDUM: ADDENDUMSENTINEL the line is in place.", "CHEST (PA AND LAT)", note_type="AR")
    return notes, detail


@pytest.fixture(scope="module")
def mimic_source(tmp_path_factory) -> dict[str, Path]:
    return write_mimic(tmp_path_factory.mktemp("mimic-source"))


@pytest.fixture(scope="module")
def mimic_import(mimic_source, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("mimic-import") / "mimic"
    report = import_mimic(mimic_source["cxr"], out, mimic_source["hosp"], mimic_source["note"])
    return out, report


def _manifest(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False).set_index("case_id")


def _case(k: int) -> str:
    return f"s{study_of(k)}"


def _labs(out: Path, k: int) -> dict[str, float]:
    path = _manifest(out).at[_case(k), "labs_path"]
    if not path:
        return {}
    table = pd.read_csv(out / path)
    assert list(table.columns) == ["name", "value", "unit"]
    return dict(zip(table["name"], table["value"]))


def _note(out: Path, k: int) -> str:
    path = _manifest(out).at[_case(k), "note_path"]
    return (out / path).read_text() if path else ""


# ---- MIMIC tests ----------------------------------------------------------------------------------------------------

def test_mimic_labels_splits_and_spec(mimic_import):
    out, report = mimic_import
    m = _manifest(out)
    assert len(m) == N + 1 and _case(UNLABELLED) not in m.index  # devices only: no label, dropped
    assert report["studies"]["dropped"]["no_label"] == 1
    for k in range(N):
        assert m.at[_case(k), "label"] == CLASS_OF[k % 6], k
        assert m.at[_case(k), "split"] == {"validate": "val"}.get(split_of(k), split_of(k))
    assert m.at[_case(0), "label"] == "pneumothorax"  # with pneumonia too: the priority decides
    assert m.at[_case(UNCERTAIN), "label"] == "edema"  # uncertain pneumonia read as negative
    counts = m.groupby(["label", "split"]).size().unstack()
    assert (counts.loc[CLASS_OF, ["train", "val", "test"]].to_numpy() >= [4, 2, 2]).all()
    spec = DatasetSpec.load(out / "spec.yaml")
    assert spec.classes == CLASS_OF and spec.rare_classes == []
    assert [(x.name, x.type, x.column) for x in spec.modalities] == [
        ("cxr", "image", "image_path"), ("report", "text", "note_path"), ("labs", "tabular", "labs_path")]
    assert spec.modality("cxr").expect == {"modality": ("CR", "DX"), "body_part": ("CHEST",)}
    assert {"wbc", "sodium", "troponin_t", "nt_probnp", "d_dimer", "crp", "lactate"} <= {lab.name for lab in spec.labs}
    assert spec.modality("labs").features == ("wbc", "sodium", "troponin_t")  # the labs these cases have
    # no subject id, date or time reaches what the import writes (image paths point into the user's own copy)
    text = (_manifest(out).drop(columns="image_path").to_csv() + "".join(
        p.read_text() for p in [*(out / "labs").glob("*.csv"), *(out / "notes").glob("*.txt")]))
    assert not any(str(subject_of(k)) in text for k in range(N)) and "2180" not in text


def test_mimic_views(mimic_import):
    out, _ = mimic_import
    m = _manifest(out)
    used = {Path(p).stem for p in m["image_path"] if p}
    assert not used & {dicom_for(k, v) for k in range(N) for v in views_of(k) if v not in ("PA", "AP")}
    assert Path(m.at[_case(2), "image_path"]).stem == dicom_for(2, "PA")  # PA before AP, whatever the ids
    assert Path(m.at[_case(3), "image_path"]).stem == dicom_for(3, "AP")
    assert m.at[_case(4), "image_path"] == "" and m.at[_case(4), "view"] == ""  # only a lateral: image missing
    assert Path(m.at[_case(1), "image_path"]).is_absolute() and Path(m.at[_case(1), "image_path"]).is_file()


def test_mimic_labs_window(mimic_import):
    out, report = mimic_import
    labs = _labs(out, 1)
    assert labs["sodium"] == 131  # 10 h before; not 150 (30 h before) nor 160 (after the study)
    assert labs["wbc"] == pytest.approx(13.1) and "inr" not in labs and len(labs) == 2
    assert _labs(out, 0)["troponin_t"] == pytest.approx(10.0)  # '<0.01' ng/mL without valuenum → 10 ng/L
    assert _labs(out, 5) == {}  # everything 30 h before the study: no labs
    assert _labs(out, 7)["sodium"] == 131  # the chemistry analyser over the blood gas at the same time
    assert _labs(out, 8)["wbc"] == pytest.approx(7.2)  # the WBC in an unknown unit is left out
    assert _labs(out, 13)["sodium"] == 131 and "cough and fever" in _note(out, 13)  # a study at 00:45:20
    assert report["labs"]["rows_skipped"] == {"unknown unit 'bananas' for itemid 51301": 1}
    assert report["labs"]["d_labitems"]["51301"] == "White Blood Cells (Blood)"


def test_mimic_reports(mimic_import):
    out, report = mimic_import
    note = _note(out, 1)  # what is known before the image is read: never the reading or the impression
    assert "INDICATION" in note and "cough and fever" in note and "COMPARISON" in note
    for gone in ("FINDINGS", WORDS_OF["pneumonia"], "IMPRESSION", "IMPRESSIONSENTINEL", "NOTIFYSENTINEL", "FINAL REPORT"):
        assert gone not in note
    assert "INDICATION" in _note(out, 6) and "WETSENTINEL" not in _note(out, 6)  # the report file, exactly linked
    assert _note(out, 9) == ""  # charted 20 h after the study: not this study's report
    assert "CTSENTINEL" not in _note(out, 10) and "INDICATION" in _note(out, 10)  # a CT is not a radiograph
    assert "ADDENDUMSENTINEL" not in _note(out, 11)
    assert report["reports"]["from_report_files"] == 1
    assert report["reports"]["matched_by_time"] == N - 1  # all but 6 (a report file) and 9 (charted too late)
    assert report["present"] == {"cxr": N, "report": N, "labs": N}  # each lacks one: 4 (lateral), 9, 5 (too early)


def test_mimic_notes_never_name_their_label_and_validate_flags_a_leaky_import(mimic_source, mimic_import, tmp_path):
    """Issue 24: with the default note no note names its own class; a deliberately leaky import (the whole report,
    FINDINGS and IMPRESSION included) is flagged by `validate` class by class."""
    from core.data.validate import validate

    out, report = mimic_import
    clean = validate(out)
    naming = {r["class"]: r for r in clean["note_naming"]["report"]}
    assert all(r["share_naming_it"] == 0 for r in naming.values()) and not any(r["flagged"] for r in naming.values())
    assert report["reports"]["note_sections"] == "context" and "warning" not in report["reports"]
    leaky = import_mimic(mimic_source["cxr"], tmp_path / "leaky", note=mimic_source["note"], note_sections="all")
    assert "inflated" in leaky["reports"]["warning"]
    flagged = validate(tmp_path / "leaky")
    rows = {r["class"]: r for r in flagged["note_naming"]["report"]}
    assert rows["pneumothorax"]["flagged"] and rows["edema"]["flagged"] and rows["pneumothorax"]["share_naming_it"] == 1
    assert not flagged["ok"] and any("'pneumothorax' cases' report name the class" in p for p in flagged["problems"])


def test_mimic_patients_never_span_splits(mimic_source, mimic_import, tmp_path):
    """Two studies per subject: the group key keeps them together, with MIMIC's split file and without it (then
    the split is by patient, not by study); the pseudonym is not the MIMIC subject id."""
    out, _ = mimic_import
    ds = Dataset.open(out)
    assert ds.spec.group == "patient" and ds.groups_across_splits() == {}
    assert len(set(ds.groups)) == N // 2 + 1 and all(g.startswith("patient-") for g in ds.groups)
    no_split = tmp_path / "cxr-no-split"
    shutil.copytree(mimic_source["cxr"], no_split)
    (no_split / "mimic-cxr-2.0.0-split.csv.gz").unlink()
    import_mimic(no_split, tmp_path / "by-patient")
    ds = Dataset.open(tmp_path / "by-patient")
    assert ds.spec.split is None and ds.groups_across_splits() == {} and set(ds.splits) == {"train", "val", "test"}
    pairs = pd.Series(ds.splits).groupby(ds.groups).nunique()
    assert (pairs == 1).all() and (pd.Series(ds.groups).value_counts() == 2).sum() >= N // 2 - 2


def test_mimic_dataset_opens_and_every_case_loads(mimic_import):
    out, _ = mimic_import
    ds = Dataset.open(out)
    assert len(ds) == N + 1 and set(ds.splits) == {"train", "val", "test"}
    for i in range(len(ds)):
        case = ds.load(i)
        assert case.present, case.case_id
    present = ds.presence()
    assert present.any(axis=0).all() and not present.all()


def test_mimic_options(mimic_source, tmp_path):
    kept = import_mimic(mimic_source["cxr"], tmp_path / "a", mimic_source["hosp"], mimic_source["note"],
                        note_sections="all", window_hours=48, uncertain="drop", views=("AP",), copy_images=True)
    m = _manifest(tmp_path / "a")
    assert "IMPRESSIONSENTINEL" in _note(tmp_path / "a", 1) and "NOTIFYSENTINEL" in _note(tmp_path / "a", 1)
    assert _labs(tmp_path / "a", 5) == {"wbc": pytest.approx(7.2), "sodium": 150}  # 32-40 h before: the latest
    assert _case(UNCERTAIN) not in m.index and kept["studies"]["dropped"]["no_label"] == 2
    assert Path(m.at[_case(2), "image_path"]).stem == _case(2)  # copied under images/, named by case
    assert (tmp_path / "a" / m.at[_case(2), "image_path"]).is_file() and m.at[_case(2), "view"] == "AP"
    assert (m["image_path"] != "").sum() == 2  # only studies 2 and 3 have an AP view
    import_mimic(mimic_source["cxr"], tmp_path / "b", uncertain="positive")
    m = _manifest(tmp_path / "b")
    assert m.at[_case(UNCERTAIN), "label"] == "pneumonia"
    assert "labs_path" not in m.columns and "note_path" in m.columns  # no hosp: no labs; report files still read
    assert [x.name for x in DatasetSpec.load(tmp_path / "b" / "spec.yaml").modalities] == ["cxr", "report"]


def test_mimic_command_line_and_errors(mimic_source, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["import", "mimic", "--cxr", str(mimic_source["cxr"]), "--hosp", str(mimic_source["hosp"] / "hosp"),
               "--note", str(mimic_source["note"] / "note"), "--out", str(out), "--limit", "12"])
    assert rc == 0 and "wrote 12 cases" in capsys.readouterr().out
    assert json.loads((out / "import_report.json").read_text())["cases"] == 12
    rc = main(["import", "mimic", "--cxr", str(mimic_source["cxr"]), "--out", str(out)])  # an earlier import: replaced
    assert rc == 0 and not (out / "labs").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    assert main(["import", "mimic", "--cxr", str(mimic_source["cxr"]), "--out", str(tmp_path / "mine")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["import", "mimic", "--cxr", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "mimic-cxr-2.0.0-metadata.csv" in capsys.readouterr().err


def test_chexpert_rules_and_study_times():
    table = pd.DataFrame([{c: np.nan for c in CHEXPERT_COLUMNS} | extra for extra in (
        {"No Finding": 1.0, "Support Devices": 1.0}, {"Edema": 1.0, "Pleural Effusion": 1.0, "Cardiomegaly": 1.0},
        {"Consolidation": 1.0}, {"Pneumothorax": -1.0, "Lung Opacity": 1.0}, {"Support Devices": 1.0},
        {"Pleural Effusion": -1.0})])
    assert list(chexpert_labels(table)) == ["no_finding", "edema", "pneumonia", "other_finding", None, None]
    assert list(chexpert_labels(table, "positive"))[3:] == ["pneumothorax", None, "pleural_effusion"]
    assert list(chexpert_labels(table, "drop").fillna("-")) == ["no_finding", "edema", "pneumonia", "-", "-", "-"]
    t = study_times(pd.Series([21800506, 21800506, 21800506]), pd.Series([213014.531, 4520.0, np.nan]))
    assert list(t[:2]) == [pd.Timestamp("2180-05-06 21:30:14"), pd.Timestamp("2180-05-06 00:45:20")]
    assert pd.isna(t[2])


def test_strip_report_keeps_what_is_known_before_the_image_is_read():
    text = ("WET READ: ___ 3 AM  large pneumothorax\n\n FINAL REPORT\n EXAMINATION: CHEST PA\n INDICATION: dyspnea\n\n"
            " FINDINGS: Lungs are clear.\n\n FINDINGS/IMPRESSION: answer one\n\n IMPRESSION: answer two\n"
            " RECOMMENDATION(S): answer three\n COMPARISON: prior study.\n")
    assert strip_report(text) == "EXAMINATION: CHEST PA\n INDICATION: dyspnea\n\n COMPARISON: prior study.\n"
    findings = strip_report(text, "findings")
    assert "Lungs are clear" in findings and "answer" not in findings and "large pneumothorax" not in findings
    everything = strip_report(text, "all")
    assert "answer two" in everything and "answer three" in everything and "large pneumothorax" not in everything
    # a report without sections cannot be cut safely: no note (the importer counts it)
    assert strip_report("There is a moderate right pneumothorax.") == ""
    assert strip_report("Chest radiograph. FINDINGS: new right lower lobe consolidation concerning for pneumonia.") == ""
    with pytest.raises(ValueError):
        strip_report(text, "impression")


# ---- Derm7pt ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def derm_source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("derm7pt") / "release_v0"
    write_derm7pt(root)
    return root


def test_derm7pt_import(derm_source, tmp_path):
    report = import_derm7pt(derm_source, tmp_path / "d")
    m = _manifest(tmp_path / "d")
    assert len(m) == 40 and report["dropped_unknown_diagnosis"] == {"mystery lesion": 1}
    expected = [g for g, names in DIAGNOSES.items() for _ in names]
    assert list(m["label"]) == expected
    assert (m.groupby(["label", "split"]).size().unstack()[["train", "val", "test"]].to_numpy() == [4, 2, 2]).all()
    assert m.at["derm7pt-4", "clinic_path"].endswith("NEL106.JPG")  # found in another letter case
    assert m.at["derm7pt-6", "derm_path"] == "" and report["images_missing"] == {"clinic": 0, "derm": 1}
    assert m.at["derm7pt-7", "sex"] == "" and m.at["derm7pt-8", "sex"] == "1"
    assert m.at["derm7pt-1", "elevation"] == "0" and m.at["derm7pt-2", "elevation"] == "1"
    assert m.at["derm7pt-3", "loc_head_neck"] == "1" and m.at["derm7pt-3", "loc_back"] == "0"
    assert not {"management", "level_of_diagnostic_difficulty", "crit_blue_whitish_veil"} & set(m.columns)
    spec = DatasetSpec.load(tmp_path / "d" / "spec.yaml")
    assert spec.classes == ["nevus", "melanoma", "basal_cell_carcinoma", "seborrheic_keratosis", "miscellaneous"]
    assert [(x.name, x.type) for x in spec.modalities] == [("clinic", "image"), ("derm", "image"),
                                                           ("patient", "tabular")]
    assert spec.modality("patient").features == spec.modality("patient").columns
    assert len(spec.modality("patient").columns) == 2 + len(LOCATIONS)
    ds = Dataset.open(tmp_path / "d")
    for i in range(len(ds)):
        case = ds.load(i)
        assert case.inputs["clinic"] is not None and case.inputs["patient"] is not None
    assert ds.load(int(np.flatnonzero(m.index == "derm7pt-6")[0])).inputs["derm"] is None


def test_derm7pt_criteria_and_grouping(derm_source, tmp_path):
    assert main(["import", "derm7pt", "--root", str(derm_source), "--out", str(tmp_path / "c"), "--with-criteria",
                 "--grouping", "melanoma", "--copy-images"]) == 0
    m = _manifest(tmp_path / "c")
    assert set(m["label"]) == {"melanoma", "not_melanoma"} and (m["label"] == "melanoma").sum() == 8
    spec = DatasetSpec.load(tmp_path / "c" / "spec.yaml")
    assert [x.name for x in spec.modalities] == ["clinic", "derm", "patient", "criteria"]
    criteria = spec.modality("criteria").features
    assert len(criteria) == 7 and set(criteria).isdisjoint(spec.modality("patient").features)
    # case 3 (row 2): atypical network, irregular streaks and dots, localized irregular pigmentation, combinations
    assert m.loc["derm7pt-3", list(criteria)].tolist() == ["1", "0", "1", "1", "1", "1", "1"]
    assert (tmp_path / "c" / m.at["derm7pt-1", "derm_path"]).is_file()
    ds = Dataset.open(tmp_path / "c")
    assert all(ds.load(i).inputs["criteria"] is not None for i in range(len(ds)))
    assert diagnosis_class("Melanoma (more than 1.5 mm)") == "melanoma" and diagnosis_class("mystery") is None


# ---- end to end -------------------------------------------------------------------------------------------------------

def test_imported_mimic_trains(mimic_import, tmp_path):
    out, _ = mimic_import
    env = {**os.environ, "RMD_DATA_DIR": str(tmp_path / "data")}  # a fresh feature cache
    run = subprocess.run([sys.executable, "-m", "core", "train", "--quick", "--data", str(out), "--out",
                          str(tmp_path / "ckpt"), "--device", "cpu"], check=False, capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    meta = json.loads((tmp_path / "ckpt" / "meta.json").read_text())
    assert meta["spec"]["classes"] == CLASS_OF and meta["data_size"] == N + 1
    assert "test macro AUROC" in run.stdout
