"""MIMIC-CXR-JPG + MIMIC-IV (hosp) + MIMIC-IV-Note → a RobustMDiff data folder, one case per chest X-ray study.

Reads (published layouts, gzip or not; nothing is downloaded):

- CXR root (MIMIC-CXR-JPG): files/pXX/p<subject_id>/s<study_id>/<dicom_id>.jpg,
  mimic-cxr-2.0.0-metadata.csv (dicom_id, subject_id, study_id, ViewPosition, StudyDate, StudyTime, ...),
  mimic-cxr-2.0.0-chexpert.csv (subject_id, study_id, the 14 CheXpert labels: 1.0, 0.0, -1.0 or blank),
  mimic-cxr-2.0.0-split.csv (dicom_id, study_id, subject_id, split: train/validate/test), optional.
  Where the MIMIC-CXR report files (files/pXX/p<subject_id>/s<study_id>.txt) lie under the CXR root (or
  --reports), they are the report of their study.
- hosp root (MIMIC-IV): hosp/labevents.csv (subject_id, itemid, charttime, value, valuenum, valueuom, ...),
  hosp/d_labitems.csv (itemid, label, fluid, category), optional.
- note root (MIMIC-IV-Note): note/radiology.csv (note_id, subject_id, note_type, charttime, text, ...),
  note/radiology_detail.csv (note_id, field_name, field_value, ...), optional.

Writes: manifest.csv (case_id, label, split, view, image_path, note_path, labs_path), spec.yaml (modalities
cxr / report / labs and the lab catalogue below), notes/<case>.txt, labs/<case>.csv (name,value,unit in the
catalogue's units) and import_report.json. A case lacks a modality when the data has none for its study.

The rules, each a documented choice (README, "Importing public datasets"):

- Label: mutually exclusive classes from the CheXpert columns, the first that applies in CLASS_RULES order
  (pneumothorax > pneumonia (Pneumonia or Consolidation) > edema > pleural effusion > other finding > no
  finding); a study with no positive finding and "No Finding" not 1 has no label and is dropped. Uncertain
  (-1.0) is read as negative by default (`uncertain="positive"`: as positive; `"drop"`: drop the study
  when reading it either way would change its class).
- Image: one frontal image per study: ViewPosition in `views`, the earlier in `views` first (PA before AP by
  default), then the smallest dicom_id. A study without one is kept with the image missing.
- Split: from the split CSV (validate → val); without it the data set's stable split applies.
- Labs: per catalogue lab the latest value charted in [study time − window, study time] for the subject
  (study time = StudyDate + StudyTime); values converted to the catalogue's unit; implausible ones left out.
- Report: exact link first (MIMIC-CXR report file, or a `study_id` row in radiology_detail), else the
  subject's chest-radiograph note (radiology_detail exam_name) nearest the study time within
  `note_window_hours`, each note used once. The note keeps only what a clinician knows before the image is
  read: the EXAMINATION, INDICATION, HISTORY, TECHNIQUE and COMPARISON sections (`note_sections="context"`,
  core/data/importers/mimic_notes.py); reports without section headers are left out and counted. The
  FINDINGS are the reading of the very image classified and the IMPRESSION is what the labels were read
  from: `note_sections="findings"` or `"all"` keep them, with a warning, only to measure the leak.
- Patient: `subject_id` becomes the spec's group key as a pseudonym (patient-00001, … in order of first
  study), so that no patient spans two splits (MIMIC's split file is by patient too) and no MIMIC id is
  written.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.data.importers import (
    DatasetImportError,
    check_out,
    find_table,
    label_counts,
    place_image,
    prepare_out,
    rare_classes,
    read_table,
    read_table_chunks,
    require_table,
    write_dataset,
)
from core.data.importers.mimic_notes import NOTE_SECTIONS, study_dir, study_reports, write_notes
from core.data.readers.labs import parse_number
from core.data.spec import DatasetSpec, LabSpec, ModalitySpec

log = logging.getLogger(__name__)

METADATA = "mimic-cxr-2.0.0-metadata.csv"
CHEXPERT = "mimic-cxr-2.0.0-chexpert.csv"
SPLIT = "mimic-cxr-2.0.0-split.csv"
CHEXPERT_COLUMNS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
                    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
                    "Pneumothorax", "Support Devices")
# (class, CheXpert columns any of which makes it): the first class that applies wins. Support Devices is not
# a finding of disease and decides nothing.
CLASS_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("pneumothorax", ("Pneumothorax",)),
    ("pneumonia", ("Pneumonia", "Consolidation")),  # consolidation: the radiographic sign of pneumonia
    ("edema", ("Edema",)),
    ("pleural_effusion", ("Pleural Effusion",)),
    ("other_finding", ("Atelectasis", "Cardiomegaly", "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion",
                       "Lung Opacity", "Pleural Other")),
    ("no_finding", ("No Finding",)),
)
CLASSES = [c for c, _ in CLASS_RULES]
UNCERTAIN_POLICIES = ("negative", "positive", "drop")
SPLIT_NAMES = {"train": "train", "validate": "val", "val": "val", "valid": "val", "test": "test"}


@dataclass(frozen=True)
class MimicLab:
    """A catalogue entry and the MIMIC-IV itemids that measure it (the first preferred at equal times), with
    the unit MIMIC-IV charts it in (assumed when a row's valueuom is blank)."""

    spec: LabSpec
    itemids: tuple[int, ...]
    mimic_unit: str


def _lab(name: str, label: str, unit: str, ref: tuple[float | None, float | None], plausible: tuple[float, float],
         itemids: tuple[int, ...], mimic_unit: str, aliases: tuple[str, ...] = (),
         alt: dict[str, float] | None = None, log_scale: bool = False) -> MimicLab:
    alt_units = {u: (f, 0.0) for u, f in (alt or {}).items()}
    return MimicLab(LabSpec(name, label, unit, ref, plausible, aliases, alt_units, log_scale), itemids, mimic_unit)


# itemids as used by the MIT-LCP mimic-code concepts (complete_blood_count, chemistry, bg, cardiac_marker,
# coagulation, inflammation); blood-gas analysers second where both measure the analyte.
LAB_CATALOGUE: tuple[MimicLab, ...] = (
    _lab("wbc", "White blood cells", "10^9/L", (4.0, 11.0), (0.0, 500.0), (51301, 51300), "K/uL",
         ("white blood cells", "wbc count", "leukocytes"), {"K/uL": 1.0, "10^3/uL": 1.0, "/uL": 0.001}, True),
    _lab("hemoglobin", "Haemoglobin", "g/dL", (12.0, 17.5), (1.0, 25.0), (51222, 50811), "g/dL",
         ("hb", "hgb", "haemoglobin"), {"g/L": 0.1, "mmol/L": 1.611}),
    _lab("platelets", "Platelets", "10^9/L", (150.0, 400.0), (0.0, 3000.0), (51265,), "K/uL",
         ("platelet count", "plt"), {"K/uL": 1.0, "10^3/uL": 1.0}, True),
    _lab("sodium", "Sodium", "mmol/L", (135.0, 145.0), (90.0, 200.0), (50983, 50824), "mEq/L", ("na",), {"mEq/L": 1.0}),
    _lab("potassium", "Potassium", "mmol/L", (3.5, 5.0), (1.0, 10.0), (50971, 50822), "mEq/L", ("k",), {"mEq/L": 1.0}),
    _lab("chloride", "Chloride", "mmol/L", (96.0, 108.0), (50.0, 160.0), (50902,), "mEq/L", ("cl",), {"mEq/L": 1.0}),
    _lab("bicarbonate", "Bicarbonate", "mmol/L", (22.0, 32.0), (2.0, 60.0), (50882,), "mEq/L", ("hco3",),
         {"mEq/L": 1.0}),
    _lab("urea_nitrogen", "Urea nitrogen", "mg/dL", (6.0, 20.0), (1.0, 300.0), (51006,), "mg/dL", ("bun",),
         {"mmol/L": 2.801}, True),
    _lab("creatinine", "Creatinine", "mg/dL", (0.6, 1.2), (0.05, 30.0), (50912,), "mg/dL", ("creat",),
         {"umol/L": 1 / 88.4}, True),
    _lab("glucose", "Glucose", "mg/dL", (70.0, 140.0), (10.0, 2000.0), (50931, 50809), "mg/dL", ("glu",),
         {"mmol/L": 18.016}, True),
    _lab("lactate", "Lactate", "mmol/L", (0.5, 2.0), (0.1, 30.0), (50813,), "mmol/L", ("lactic acid",),
         {"mg/dL": 1 / 9.008, "mEq/L": 1.0}, True),
    _lab("crp", "C-reactive protein", "mg/L", (0.0, 5.0), (0.0, 1000.0), (50889,), "mg/L", ("c-reactive protein",),
         {"mg/dL": 10.0}, True),
    _lab("troponin_t", "Troponin T", "ng/L", (0.0, 10.0), (0.0, 100000.0), (51003,), "ng/mL", ("tnt",),
         {"ng/mL": 1000.0, "ug/L": 1000.0}, True),
    _lab("nt_probnp", "NT-proBNP", "pg/mL", (0.0, 300.0), (0.0, 200000.0), (50963,), "pg/mL", ("ntprobnp",),
         {"ng/L": 1.0}, True),
    _lab("d_dimer", "D-dimer", "ng/mL", (0.0, 500.0), (0.0, 200000.0), (51196,), "ng/mL", ("ddimer",),
         {"ng/mL FEU": 1.0, "ug/L": 1.0, "ug/L FEU": 1.0, "ug/mL": 1000.0, "ug/mL FEU": 1000.0, "mg/L": 1000.0,
          "mg/L FEU": 1000.0}, True),
    _lab("esr", "Erythrocyte sedimentation rate", "mm/h", (0.0, 20.0), (0.0, 200.0), (51288,), "mm/hr",
         ("sed rate", "sedimentation rate"), {"mm/hr": 1.0}, True),
    _lab("albumin", "Albumin", "g/dL", (3.5, 5.2), (0.5, 10.0), (50862,), "g/dL", (), {"g/L": 0.1}),
    _lab("bilirubin", "Total bilirubin", "mg/dL", (0.0, 1.5), (0.0, 80.0), (50885,), "mg/dL", ("bilirubin total",),
         {"umol/L": 1 / 17.1}, True),
)
ITEMIDS: dict[int, tuple[MimicLab, int]] = {i: (lab, rank) for lab in LAB_CATALOGUE for rank, i in enumerate(lab.itemids)}


def import_mimic(cxr: str | Path, out: str | Path, hosp: str | Path | None = None, note: str | Path | None = None, *,
                 window_hours: float = 24.0, note_window_hours: float = 12.0, note_sections: str = "context",
                 views: tuple[str, ...] = ("PA", "AP"), uncertain: str = "negative", copy_images: bool = False,
                 reports: str | Path | None = None, limit: int | None = None, rare_below: float = 0.05) -> dict[str, Any]:
    """Build the data folder `out` from the user's copies; returns the import report (also import_report.json)."""
    if note_sections not in NOTE_SECTIONS:
        raise DatasetImportError("--note-sections", f"'{note_sections}' is not one of {NOTE_SECTIONS}")
    if uncertain not in UNCERTAIN_POLICIES:
        raise DatasetImportError("--uncertain", f"'{uncertain}' is not one of {UNCERTAIN_POLICIES}")
    views = tuple(v.strip().upper() for v in views if v.strip())
    if not views:
        raise DatasetImportError("--views", "names no view (for example PA,AP)")
    check_out(Path(out))
    cxr = Path(cxr)
    if not cxr.is_dir():
        raise DatasetImportError(str(cxr), "is not a folder (the MIMIC-CXR-JPG root)")
    report: dict[str, Any] = {"dataset": "mimic", "options": {
        "window_hours": window_hours, "note_window_hours": note_window_hours, "note_sections": note_sections,
        "views": list(views), "uncertain": uncertain, "copy_images": copy_images, "limit": limit}}

    log.info("reading the MIMIC-CXR-JPG tables under %s", cxr)
    meta = _read_metadata(require_table(cxr, METADATA))
    studies, dropped = _labelled_studies(require_table(cxr, CHEXPERT), meta, uncertain)
    report["studies"] = {"with_labels": int(len(studies) + sum(dropped.values())), "dropped": dropped}
    if limit is not None:
        studies = studies.sort_values("study_id").head(limit)
    if studies.empty:
        raise DatasetImportError(cxr.name, "has no study with a usable label and metadata")
    studies = studies.sort_values("study_id").reset_index(drop=True)
    studies["case_id"] = "s" + studies["study_id"].astype(str)
    studies = _add_frontal_image(studies, meta, views, cxr)
    studies = _add_split(studies, find_table(cxr, SPLIT))

    out = prepare_out(Path(out))
    studies["image_path"] = [place_image(Path(p), out, c, copy_images) if isinstance(p, str) else ""
                             for p, c in zip(studies["image_file"], studies["case_id"])]
    studies["note_path"] = ""
    studies["labs_path"] = ""
    modalities = [ModalitySpec("cxr", "image", column="image_path",
                               expect={"modality": ("CR", "DX"), "body_part": ("CHEST",)})]
    measured: set[str] = set()
    if hosp is not None:
        labs = _study_labs(Path(hosp), studies, window_hours, report)
        studies["labs_path"] = _write_labs(out, studies["case_id"], labs)
        # features: the labs these cases have (a never-measured lab carries nothing); labs: the whole catalogue
        measured = set(labs["lab"])
        if measured:
            modalities.append(ModalitySpec("labs", "tabular", column="labs_path", features=tuple(
                lab.spec.name for lab in LAB_CATALOGUE if lab.spec.name in measured)))
    texts = study_reports(studies, Path(reports) if reports else cxr, Path(note) if note else None,
                           note_window_hours, report)
    if texts or note is not None:
        studies["note_path"] = write_notes(out, studies["case_id"], texts, note_sections, report)
        modalities.insert(1, ModalitySpec("report", "text", column="note_path"))

    first_study = studies.groupby("subject_id")["study_id"].transform("min")
    order = {s: k for k, s in enumerate(sorted(set(zip(first_study, studies["subject_id"]))), 1)}
    studies["patient"] = [f"patient-{order[(f, s)]:05d}" for f, s in zip(first_study, studies["subject_id"])]
    columns = ["case_id", "patient", "label"] + (["split"] if "split" in studies else []) + ["view"]
    manifest = studies[columns + [m.column for m in modalities]]
    classes = [c for c in CLASSES if c in set(manifest["label"])]
    spec = DatasetSpec(name="mimic-cxr", label="label", case_id="case_id", group="patient",
                       split="split" if "split" in manifest else None, classes=classes,
                       rare_classes=rare_classes(manifest["label"], classes, rare_below), modalities=modalities,
                       labs=[lab.spec for lab in LAB_CATALOGUE] if measured else [])
    report["cases"] = len(manifest)
    report["labels"] = label_counts(manifest)
    report["present"] = {m.name: int((manifest[m.column] != "").sum()) for m in modalities}
    write_dataset(out, manifest, spec, report)
    return report


# ---- CXR: metadata, labels, images, split ----------------------------------------------------------------------

def _read_metadata(path: Path) -> pd.DataFrame:
    meta = read_table(path, ["dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime"],
                      dtype={"dicom_id": str, "ViewPosition": str})
    meta["ViewPosition"] = meta["ViewPosition"].fillna("").str.strip().str.upper()
    meta["study_time"] = study_times(meta["StudyDate"], meta["StudyTime"])
    return meta


def study_times(dates: pd.Series, times: pd.Series) -> pd.Series:
    """StudyDate (YYYYMMDD) + StudyTime (HHMMSS.fff, leading zeros dropped: 4520.0 is 00:45:20) → datetime."""
    day = np.floor(pd.to_numeric(dates, errors="coerce")).astype("Int64").astype(str)
    clock = np.floor(pd.to_numeric(times, errors="coerce")).astype("Int64").astype(str).str.zfill(6)
    return pd.to_datetime(day + clock, format="%Y%m%d%H%M%S", errors="coerce")  # a blank date or time: NaT


def chexpert_labels(table: pd.DataFrame, uncertain: str = "negative") -> pd.Series:
    """The class of each row by CLASS_RULES (None where no rule applies, or, with `uncertain="drop"`, where
    reading the uncertain findings as positive or as negative would give different classes)."""
    if uncertain == "drop":
        low, high = chexpert_labels(table, "negative"), chexpert_labels(table, "positive")
        return low.where(low.eq(high) | (low.isna() & high.isna()))
    value = 1.0 if uncertain == "positive" else 0.0
    positive = table[list(CHEXPERT_COLUMNS)].astype(float).replace(-1.0, value).eq(1.0)
    label = pd.Series([None] * len(table), index=table.index, dtype=object)
    for name, columns in reversed(CLASS_RULES):  # later rules first, so that earlier ones overwrite
        label[positive[list(columns)].any(axis=1)] = name
    return label


def _labelled_studies(path: Path, meta: pd.DataFrame, uncertain: str) -> tuple[pd.DataFrame, dict[str, int]]:
    table = read_table(path, ["subject_id", "study_id", *CHEXPERT_COLUMNS])
    table = table.drop_duplicates("study_id")
    table["label"] = chexpert_labels(table, uncertain)
    times = meta.groupby("study_id")["study_time"].min()
    table["study_time"] = table["study_id"].map(times)
    dropped = {"no_label": int(table["label"].isna().sum()),
               "not_in_metadata": int((table["label"].notna() & ~table["study_id"].isin(times.index)).sum())}
    keep = table["label"].notna() & table["study_id"].isin(times.index)
    dropped["no_study_time"] = int((keep & table["study_time"].isna()).sum())
    keep &= table["study_time"].notna()
    return table.loc[keep, ["subject_id", "study_id", "study_time", "label"]].copy(), dropped


def _add_frontal_image(studies: pd.DataFrame, meta: pd.DataFrame, views: tuple[str, ...], cxr: Path) -> pd.DataFrame:
    """One frontal image per study: the earliest view in `views`, then the smallest dicom_id."""
    frontal = meta[meta["ViewPosition"].isin(views) & meta["study_id"].isin(studies["study_id"])].copy()
    frontal["rank"] = frontal["ViewPosition"].map({v: i for i, v in enumerate(views)})
    first = frontal.sort_values(["study_id", "rank", "dicom_id"]).drop_duplicates("study_id").set_index("study_id")
    studies = studies.copy()
    studies["view"] = studies["study_id"].map(first["ViewPosition"]).fillna("")
    studies["dicom_id"] = studies["study_id"].map(first["dicom_id"])
    files = []
    for subject, study, dicom in zip(studies["subject_id"], studies["study_id"], studies["dicom_id"]):
        path = None if not isinstance(dicom, str) else study_dir(cxr, subject, study) / f"{dicom}.jpg"
        files.append(str(path) if path is not None and path.is_file() else None)
    studies["image_file"] = files
    return studies


def _add_split(studies: pd.DataFrame, path: Path | None) -> pd.DataFrame:
    if path is None:
        return studies
    split = read_table(path, ["dicom_id", "study_id", "split"], dtype={"dicom_id": str, "split": str})
    split["split"] = split["split"].str.strip().str.lower().map(SPLIT_NAMES)
    by_dicom = split.dropna(subset=["split"]).drop_duplicates("dicom_id").set_index("dicom_id")["split"]
    by_study = split.dropna(subset=["split"]).drop_duplicates("study_id").set_index("study_id")["split"]
    studies = studies.copy()
    studies["split"] = studies["dicom_id"].map(by_dicom).fillna(studies["study_id"].map(by_study))
    # a study the split file does not list (rare): training, so that no evaluation set is silently changed
    studies["split"] = studies["split"].fillna("train")
    return studies


# ---- MIMIC-IV hosp: labs -----------------------------------------------------------------------------------------

def _study_labs(hosp: Path, studies: pd.DataFrame, window_hours: float, report: dict[str, Any]) -> pd.DataFrame:
    """(case_id, lab, value) in catalogue units: per study and lab the latest value in the window before it."""
    path = require_table(hosp, "labevents.csv", ("hosp",))
    log.info("reading %s for %d subjects (the full table takes minutes)", path.name, studies["subject_id"].nunique())
    events = _read_labevents(path, set(studies["subject_id"]))
    items = find_table(hosp, "d_labitems.csv", ("hosp",))
    stats: dict[str, Any] = {"rows_read": len(events)}
    if items is not None:
        stats["d_labitems"] = _itemid_labels(items)
    events, skipped = _canonical_values(events)
    stats["rows_skipped"] = skipped
    left = studies[["case_id", "subject_id", "study_time"]].merge(
        pd.DataFrame({"lab": [lab.spec.name for lab in LAB_CATALOGUE]}), how="cross").sort_values("study_time")
    right = events.sort_values(["charttime", "rank"], ascending=[True, False])  # preferred itemid last: chosen
    joined = pd.merge_asof(left, right, left_on="study_time", right_on="charttime", by=["subject_id", "lab"],
                           direction="backward", allow_exact_matches=True,
                           tolerance=pd.Timedelta(hours=window_hours)).dropna(subset=["value"])
    stats["values_written"] = {k: int(v) for k, v in joined["lab"].value_counts().sort_index().items()}
    stats["cases_with_labs"] = int(joined["case_id"].nunique())
    report["labs"] = stats
    return joined[["case_id", "lab", "value"]]


def _read_labevents(path: Path, subjects: set[int]) -> pd.DataFrame:
    columns = ["subject_id", "itemid", "charttime", "value", "valuenum", "valueuom"]
    parts = []
    for chunk in read_table_chunks(path, columns, dtype={"value": str, "valueuom": str}):
        parts.append(chunk[chunk["itemid"].isin(ITEMIDS.keys()) & chunk["subject_id"].isin(subjects)])
    events = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    events["charttime"] = pd.to_datetime(events["charttime"], errors="coerce")
    return events.dropna(subset=["charttime"])


def _itemid_labels(path: Path) -> dict[str, str]:
    """{itemid: 'label (fluid)'} of the mapped itemids, for the report (so a user can check the mapping)."""
    items = read_table(path, ["itemid", "label", "fluid"], dtype={"label": str, "fluid": str})
    items = items[items["itemid"].isin(ITEMIDS.keys())]
    return {str(int(i)): f"{lab} ({fluid})" for i, lab, fluid in zip(items["itemid"], items["label"], items["fluid"])}


def _canonical_values(events: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Lab name, rank of the itemid, and the value in the catalogue unit; rows without a usable number, with a
    unit the catalogue does not know or outside the plausible range are left out (and counted)."""
    skipped: Counter[str] = Counter()
    rows = []
    for (itemid, unit), group in events.groupby(["itemid", events["valueuom"].fillna("")], sort=False):
        lab, rank = ITEMIDS[int(itemid)]
        conv = lab.spec.conversion(unit or lab.mimic_unit)
        if conv is None:
            skipped[f"unknown unit '{unit}' for itemid {int(itemid)}"] += len(group)
            continue
        numbers = group["valuenum"].astype(float).copy()
        blank = numbers.isna()  # "<0.01" and the like carry no valuenum: parse the text
        numbers[blank] = group.loc[blank, "value"].map(_number)
        values = numbers * conv[0] + conv[1]
        lo, hi = lab.spec.plausible
        ok = values.between(lo, hi)
        skipped["no number"] += int(numbers.isna().sum())
        skipped["implausible"] += int((numbers.notna() & ~ok).sum())
        rows.append(pd.DataFrame({"subject_id": group["subject_id"][ok], "charttime": group["charttime"][ok],
                                  "lab": lab.spec.name, "rank": rank, "value": values[ok]}))
    columns = ["subject_id", "charttime", "lab", "rank", "value"]
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=columns)
    table["subject_id"] = table["subject_id"].astype(np.int64)
    table["charttime"] = pd.to_datetime(table["charttime"])
    return table, {k: v for k, v in skipped.items() if v}


def _number(raw: object) -> float:
    try:
        value, _ = parse_number(raw)
    except ValueError:
        return np.nan
    return np.nan if value is None else value


def _write_labs(out: Path, case_ids: pd.Series, labs: pd.DataFrame) -> list[str]:
    units = {lab.spec.name: lab.spec.unit for lab in LAB_CATALOGUE}
    order = {lab.spec.name: i for i, lab in enumerate(LAB_CATALOGUE)}
    (out / "labs").mkdir(exist_ok=True)
    written = set()
    for case_id, group in labs.groupby("case_id", sort=False):
        group = group.sort_values("lab", key=lambda s: s.map(order))
        table = pd.DataFrame({"name": group["lab"], "value": group["value"].map(lambda v: f"{v:.6g}"),
                              "unit": group["lab"].map(units)})
        table.to_csv(out / "labs" / f"{case_id}.csv", index=False)
        written.add(case_id)
    return [f"labs/{c}.csv" if c in written else "" for c in case_ids]
