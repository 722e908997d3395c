"""MIMIC reports for the MIMIC importer (core/data/importers/mimic.py): link each study to its report (the
MIMIC-CXR report file, a study_id in radiology_detail, else the subject's chest-radiograph note nearest in
time) and keep of it only what a clinician knows before the image is read.

The labels were read from the report (CheXpert labeller over the impression, falling back to the
findings), and the FINDINGS are the radiologist's reading of the very image being classified: either
left in, the "note" states the answer and every figure is inflated. The default note (`context`) is
therefore the report's EXAMINATION, INDICATION, HISTORY, REASON FOR EXAM, TECHNIQUE and COMPARISON
sections; a report with no section header cannot be cut safely and is left out (counted). `findings`
adds the FINDINGS, `all` keeps everything after FINAL REPORT (impression included): both only to
measure how much the leak inflates results."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.data.importers import find_table, has_words, read_table_chunks, require_table

log = logging.getLogger(__name__)

# Report sections: what a clinician knows before the image is read (the default note), then the reading itself.
_HEADER = re.compile(r"^[ \t]*([A-Z][A-Z /&()'-]*[A-Z)])[ \t]*:", re.MULTILINE)
CONTEXT_SECTIONS = {"EXAMINATION", "EXAM", "INDICATION", "INDICATIONS", "HISTORY", "CLINICAL HISTORY",
                    "REASON FOR EXAM", "REASON FOR EXAMINATION", "TECHNIQUE", "COMPARISON", "COMPARISONS"}
FINDINGS_SECTIONS = {"FINDINGS", "FINDING"}
NOTE_SECTIONS = ("context", "findings", "all")
LEAK_WARNING = ("the note then carries the radiologist's reading of the very image being classified (and with 'all' "
                "the impression the labels were read from): results on it are inflated, use it only to measure that")
_FINAL_REPORT = re.compile(r"^[ \t]*FINAL REPORT[ \t]*$", re.MULTILINE)
# radiology_detail exam names of chest radiographs (not CT, MR, ultrasound, nuclear medicine or angiography)
_CROSS_SECTIONAL = re.compile(r"\b(?:CT|CTA|MR|MRI|MRA|US|ULTRASOUND|NM|PET|ANGIO\w*|FLUORO\w*)\b")


def study_dir(root: Path, subject: int, study: int) -> Path:
    """files/pXX/p<subject_id>/s<study_id>, XX the first two digits of the subject id."""
    s = str(int(subject))
    return root / "files" / f"p{s[:2]}" / f"p{s}" / f"s{int(study)}"


def study_reports(studies: pd.DataFrame, reports_root: Path, note: Path | None, window_hours: float,
                   report: dict[str, Any]) -> dict[str, str]:
    """{case_id: raw report text}: exact links first, then the nearest chest-radiograph note in time."""
    texts: dict[str, str] = {}
    for case_id, subject, study in zip(studies["case_id"], studies["subject_id"], studies["study_id"]):
        path = study_dir(reports_root, subject, study).with_suffix(".txt")
        if path.is_file():
            texts[case_id] = path.read_text(encoding="utf-8", errors="replace")
    stats = {"from_report_files": len(texts)}
    if note is not None:
        stats.update(_match_notes(note, studies[~studies["case_id"].isin(texts.keys())], window_hours, texts))
    report["reports"] = stats
    return texts


def _match_notes(note: Path, studies: pd.DataFrame, window_hours: float, texts: dict[str, str]) -> dict[str, int]:
    detail = find_table(note, "radiology_detail.csv", ("note",))
    chest, linked = _radiology_detail(detail) if detail is not None else (None, {})
    path = require_table(note, "radiology.csv", ("note",))
    log.info("reading %s for %d subjects", path.name, studies["subject_id"].nunique())
    notes = _read_radiology(path, set(studies["subject_id"]), chest)
    by_id = dict(zip(notes["note_id"], notes["text"]))
    exact = 0
    for case_id, study in zip(studies["case_id"], studies["study_id"]):
        note_id = linked.get(int(study))
        if note_id in by_id:
            texts[case_id] = by_id[note_id]
            exact += 1
    used = set(linked.values())
    rest = studies[~studies["case_id"].isin(texts.keys())]
    nearest = nearest_notes(rest, notes[~notes["note_id"].isin(used)], window_hours)
    for case_id, note_id in nearest.items():
        texts[case_id] = by_id[note_id]
    return {"notes_read": len(notes), "from_detail_study_id": exact, "matched_by_time": len(nearest),
            "chest_filter": chest is not None}


def _radiology_detail(path: Path) -> tuple[set[str] | None, dict[int, str]]:
    """(note_ids of chest radiographs by exam_name, {study_id: note_id} where the table carries a study_id)."""
    chest: set[str] = set()
    linked: dict[int, str] = {}
    seen_exam = False
    for chunk in read_table_chunks(path, ["note_id", "field_name", "field_value"], dtype=str):
        exam = chunk[chunk["field_name"] == "exam_name"]
        seen_exam |= not exam.empty
        names = exam["field_value"].fillna("").str.upper()
        is_chest = names.str.contains("CHEST") & ~names.str.contains(_CROSS_SECTIONAL)
        chest.update(exam["note_id"][is_chest])
        ids = chunk[chunk["field_name"] == "study_id"]
        for note_id, value in zip(ids["note_id"], pd.to_numeric(ids["field_value"], errors="coerce")):
            if not np.isnan(value):
                linked.setdefault(int(value), note_id)
    return (chest if seen_exam else None), linked


def _read_radiology(path: Path, subjects: set[int], chest: set[str] | None) -> pd.DataFrame:
    columns = ["note_id", "subject_id", "note_type", "charttime", "text"]
    parts = []
    for chunk in read_table_chunks(path, columns, chunksize=200_000, dtype={"note_id": str, "note_type": str,
                                                                             "text": str}):
        keep = chunk["subject_id"].isin(subjects) & chunk["note_type"].fillna("RR").str.upper().eq("RR")
        if chest is not None:
            keep &= chunk["note_id"].isin(chest)
        parts.append(chunk[keep])
    notes = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    notes["charttime"] = pd.to_datetime(notes["charttime"], errors="coerce")
    return notes.dropna(subset=["charttime", "text"])


def nearest_notes(studies: pd.DataFrame, notes: pd.DataFrame, window_hours: float) -> dict[str, str]:
    """{case_id: note_id}: per study the subject's note charted nearest its time within ±window; a note claimed
    by several studies goes to the nearest of them (the others have no report)."""
    if studies.empty or notes.empty:
        return {}
    left = studies[["case_id", "subject_id", "study_time"]].sort_values("study_time")
    right = notes[["note_id", "subject_id", "charttime"]].sort_values("charttime")
    right = right.assign(subject_id=right["subject_id"].astype(left["subject_id"].dtype))
    pairs = pd.merge_asof(left, right, left_on="study_time", right_on="charttime", by="subject_id",
                          direction="nearest", tolerance=pd.Timedelta(hours=window_hours)).dropna(subset=["note_id"])
    pairs["gap"] = (pairs["study_time"] - pairs["charttime"]).abs()
    pairs = pairs.sort_values(["gap", "case_id"]).drop_duplicates("note_id")
    return dict(zip(pairs["case_id"], pairs["note_id"]))


def strip_report(text: str, sections: str = "context") -> str:
    """The report as the model may read it: nothing before FINAL REPORT (a WET READ), then per `sections`
    ("context": the sections of CONTEXT_SECTIONS; "findings": those and FINDINGS; "all": everything). Returns ""
    for a report without a section header when sections are chosen (it cannot be cut safely)."""
    if sections not in NOTE_SECTIONS:
        raise ValueError(f"sections must be one of {NOTE_SECTIONS}, not {sections!r}")
    final = _FINAL_REPORT.search(text)
    if final:
        text = text[final.end():]
    if sections != "all":
        allowed = CONTEXT_SECTIONS | (FINDINGS_SECTIONS if sections == "findings" else set())
        headers = list(_HEADER.finditer(text))
        ends = [h.start() for h in headers[1:]] + [len(text)]
        text = "".join(text[h.start():end] for h, end in zip(headers, ends)
                       if re.sub(r"\s+", " ", h.group(1)).strip() in allowed)
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return text + "\n" if text else ""


def write_notes(out: Path, case_ids: pd.Series, texts: dict[str, str], sections: str,
                report: dict[str, Any]) -> list[str]:
    """Each study's note (see `strip_report`); counts what was left out and why."""
    (out / "notes").mkdir(exist_ok=True)
    paths, empty, unsectioned = [], 0, 0
    for case_id in case_ids:
        raw = texts.get(case_id)
        text = strip_report(raw, sections) if raw is not None else ""
        if not has_words(text):  # no context section, or no section at all: no note rather than a leaky one
            if raw is not None:
                unsectioned += sections != "all" and not _HEADER.search(raw)
                empty += 1
            paths.append("")
            continue
        (out / "notes" / f"{case_id}.txt").write_text(text, encoding="utf-8")
        paths.append(f"notes/{case_id}.txt")
    stats = report.setdefault("reports", {})
    stats.update({"note_sections": sections, "left_out": empty, "left_out_without_sections": unsectioned})
    if sections != "context":
        stats["warning"] = LEAK_WARNING
        log.warning("note sections '%s': %s", sections, LEAK_WARNING)
    return paths
