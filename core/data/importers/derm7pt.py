"""Derm7pt (the seven-point checklist dermatology dataset) → a RobustMDiff data folder, one case per lesion.

Reads (the published release layout; nothing is downloaded):

- meta/meta.csv: case_num, diagnosis, seven_point_score, pigment_network, streaks, pigmentation,
  regression_structures, dots_and_globules, blue_whitish_veil, vascular_structures,
  level_of_diagnostic_difficulty, elevation, location, sex, management, clinic, derm, case_id, notes
- meta/train_indexes.csv, meta/valid_indexes.csv, meta/test_indexes.csv: column `indexes`, 0-based rows of
  meta.csv (the published split)
- images/<clinic>, images/<derm>: the clinical photograph and the dermoscopic image of each case (found
  case-insensitively, since the release mixes NEL025.JPG and Nel026.jpg)

Writes: manifest.csv, spec.yaml, import_report.json; images are referenced where they are (or copied).

Choices (README, "Importing public datasets"):

- Modalities: `clinic` and `derm` images, and `patient`, a tabular group of what is known before the
  lesion is examined: sex (male 1, female 0), elevation (flat 0, palpable 1, nodular 2) and location one-hot
  (one column per site found in meta.csv). Diagnostic difficulty and management are decided with or after
  the diagnosis and are left out.
- The seven-point criteria are dermoscopic findings that nearly define the label; they are left out unless
  `with_criteria`, which adds a second tabular group `criteria` with the seven criteria as 0/1 (atypical
  pigment network, blue-whitish veil, atypical vascular structures (dotted, linear irregular), irregular
  pigmentation, irregular streaks, irregular dots and globules, regression structures).
- Labels: `grouping="five"` (default) is the five-class grouping of Kawahara et al., IEEE JBHI 2019: basal
  cell carcinoma, nevus (blue, clark, combined, congenital, dermal, recurrent, reed or spitz), melanoma (in
  situ, every thickness, metastasis), seborrheic keratosis, miscellaneous (dermatofibroma, lentigo,
  melanosis, miscellaneous, vascular lesion); `grouping="melanoma"` is melanoma vs not_melanoma.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from core.data.importers import (
    DatasetImportError,
    check_out,
    label_counts,
    place_image,
    prepare_out,
    rare_classes,
    read_table,
    require_table,
    write_dataset,
)
from core.data.spec import DatasetSpec, LabSpec, ModalitySpec

META_COLUMNS = ("case_num", "diagnosis", "elevation", "location", "sex", "clinic", "derm")
CRITERIA_COLUMNS = ("pigment_network", "blue_whitish_veil", "vascular_structures", "pigmentation", "streaks",
                    "dots_and_globules", "regression_structures")
SPLIT_FILES = {"train": "train_indexes.csv", "val": "valid_indexes.csv", "test": "test_indexes.csv"}
GROUPINGS = ("five", "melanoma")
FIVE_CLASSES = ["nevus", "melanoma", "basal_cell_carcinoma", "seborrheic_keratosis", "miscellaneous"]
_MISCELLANEOUS = {"dermatofibroma", "lentigo", "melanosis", "miscellaneous", "vascular lesion"}
ELEVATION = {"flat": 0.0, "palpable": 1.0, "nodular": 2.0}
SEX = {"female": 0.0, "male": 1.0}
# criterion column → (feature name, label, values that make the criterion present)
CRITERIA: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "pigment_network": ("crit_atypical_network", "Atypical pigment network", ("atypical",)),
    "blue_whitish_veil": ("crit_blue_whitish_veil", "Blue-whitish veil", ("present",)),
    "vascular_structures": ("crit_atypical_vascular", "Atypical vascular structures", ("dotted", "linear irregular")),
    "pigmentation": ("crit_irregular_pigmentation", "Irregular pigmentation", ("diffuse irregular", "localized irregular")),
    "streaks": ("crit_irregular_streaks", "Irregular streaks", ("irregular",)),
    "dots_and_globules": ("crit_irregular_dots_globules", "Irregular dots and globules", ("irregular",)),
    "regression_structures": ("crit_regression", "Regression structures", ("blue areas", "white areas", "combinations")),
}


def import_derm7pt(root: str | Path, out: str | Path, *, grouping: str = "five", with_criteria: bool = False,
                   copy_images: bool = False, rare_below: float = 0.05) -> dict[str, Any]:
    """Build the data folder `out` from the user's Derm7pt release at `root`; returns the import report."""
    if grouping not in GROUPINGS:
        raise DatasetImportError("--grouping", f"'{grouping}' is not one of {GROUPINGS}")
    check_out(Path(out))
    root = Path(root)
    if not root.is_dir():
        raise DatasetImportError(str(root), "is not a folder (the Derm7pt release, with meta/ and images/)")
    columns = list(META_COLUMNS) + (list(CRITERIA_COLUMNS) if with_criteria else [])
    meta = read_table(require_table(root, "meta.csv", ("meta",)), columns, dtype=str, keep_default_na=False)
    meta = meta.apply(lambda c: c.str.strip())
    report: dict[str, Any] = {"dataset": "derm7pt", "options": {"grouping": grouping, "with_criteria": with_criteria,
                                                                "copy_images": copy_images}, "rows": len(meta)}
    meta["label"] = meta["diagnosis"].map(lambda d: diagnosis_class(d, grouping))
    unknown = sorted(set(meta.loc[meta["label"].isna(), "diagnosis"]))
    report["dropped_unknown_diagnosis"] = {d: int((meta["diagnosis"] == d).sum()) for d in unknown}
    meta["split"] = _published_split(root, len(meta), report)
    meta = meta[meta["label"].notna()].reset_index(drop=True)
    if meta.empty:
        raise DatasetImportError("meta.csv", "has no case with a known diagnosis")

    out = prepare_out(Path(out))
    meta["case_id"] = "derm7pt-" + meta["case_num"].where(meta["case_num"] != "", meta.index.astype(str))
    finder = _ImageFinder(root / "images")
    missing = {}
    for kind in ("clinic", "derm"):
        files = [finder.find(p) for p in meta[kind]]
        missing[kind] = sum(f is None for f in files)
        meta[f"{kind}_path"] = [place_image(f, out, f"{c}-{kind}", copy_images) if f is not None else ""
                                for f, c in zip(files, meta["case_id"])]
    report["images_missing"] = missing

    patient, patient_specs = patient_features(meta)
    tables = [patient]
    modalities = [ModalitySpec("clinic", "image", column="clinic_path"),
                  ModalitySpec("derm", "image", column="derm_path"),
                  ModalitySpec("patient", "tabular", columns=tuple(patient.columns),
                               features=tuple(s.name for s in patient_specs))]
    specs = list(patient_specs)
    if with_criteria:
        criteria, criteria_specs = criteria_features(meta)
        tables.append(criteria)
        modalities.append(ModalitySpec("criteria", "tabular", columns=tuple(criteria.columns),
                                       features=tuple(s.name for s in criteria_specs)))
        specs += criteria_specs
    manifest = pd.concat([meta[["case_id", "label", "split", "clinic_path", "derm_path"]], *tables], axis=1)
    classes = FIVE_CLASSES if grouping == "five" else ["melanoma", "not_melanoma"]
    classes = [c for c in classes if c in set(manifest["label"])]
    # Derm7pt publishes one lesion per case and no patient id: each case is its own group (a group key all the same,
    # so that a later release with patient ids only has to fill it in)
    spec = DatasetSpec(name="derm7pt", label="label", case_id="case_id", split="split", group="case_id",
                       classes=classes, rare_classes=rare_classes(manifest["label"], classes, rare_below), modalities=modalities,
                       labs=specs)
    report["cases"] = len(manifest)
    report["labels"] = label_counts(manifest)
    write_dataset(out, manifest, spec, report)
    return report


def diagnosis_class(diagnosis: str, grouping: str = "five") -> str | None:
    """A Derm7pt diagnosis string → its class under `grouping` (None when the string is not a known one)."""
    d = re.sub(r"\s+", " ", str(diagnosis).strip().lower())
    if d.startswith("melanoma"):
        five = "melanoma"
    elif d == "basal cell carcinoma":
        five = "basal_cell_carcinoma"
    elif d == "seborrheic keratosis":
        five = "seborrheic_keratosis"
    elif d.endswith("nevus"):
        five = "nevus"
    elif d in _MISCELLANEOUS or d == "df/lt/mls/misc":
        five = "miscellaneous"
    else:
        return None
    if grouping == "melanoma":
        return "melanoma" if five == "melanoma" else "not_melanoma"
    return five


def _published_split(root: Path, n: int, report: dict[str, Any]) -> list[str]:
    """train/val/test from the index files (0-based rows of meta.csv); a row none lists goes to training."""
    split = ["" for _ in range(n)]
    for name, file in SPLIT_FILES.items():
        path = require_table(root, file, ("meta",))
        for i in read_table(path, ["indexes"])["indexes"].astype(int):
            if not 0 <= i < n:
                raise DatasetImportError(file, f"lists row {i}, but meta.csv has {n} rows (0-based)")
            if split[i]:
                raise DatasetImportError(file, f"lists row {i}, which {SPLIT_FILES[split[i]]} lists too")
            split[i] = name
    report["rows_without_split"] = sum(s == "" for s in split)
    return [s or "train" for s in split]


class _ImageFinder:
    """images/<relative path> as written in meta.csv, else the same path in any letter case."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._index: dict[str, Path] | None = None

    def find(self, relative: str) -> Path | None:
        if not relative:
            return None
        path = self.folder / relative
        if path.is_file():
            return path
        if self._index is None:
            self._index = {p.relative_to(self.folder).as_posix().lower(): p
                           for p in self.folder.rglob("*") if p.is_file()} if self.folder.is_dir() else {}
        return self._index.get(Path(relative).as_posix().lower())


def patient_features(meta: pd.DataFrame) -> tuple[pd.DataFrame, list[LabSpec]]:
    """sex, elevation, loc_<site> one-hot: strings '' where unknown (the manifest's empty = not measured)."""
    sites = sorted(s for s in meta["location"].str.lower().unique() if s)
    table = pd.DataFrame(index=meta.index)
    table["sex"] = meta["sex"].str.lower().map(SEX)
    table["elevation"] = meta["elevation"].str.lower().map(ELEVATION)
    specs = [LabSpec("sex", "Sex (male)", "", (None, None), (0.0, 1.0), ("male",)),
             LabSpec("elevation", "Elevation (flat 0, palpable 1, nodular 2)", "", (None, None), (0.0, 2.0))]
    for site in sites:
        name = "loc_" + re.sub(r"[^a-z0-9]+", "_", site).strip("_")
        known = meta["location"].str.lower() != ""
        table[name] = (meta["location"].str.lower() == site).astype(float).where(known)
        specs.append(LabSpec(name, f"Location: {site}", "", (None, None), (0.0, 1.0)))
    return _as_cells(table), specs


def criteria_features(meta: pd.DataFrame) -> tuple[pd.DataFrame, list[LabSpec]]:
    """The seven-point criteria as 0/1 (a blank finding is not measured)."""
    table = pd.DataFrame(index=meta.index)
    specs = []
    for column, (name, label, present) in CRITERIA.items():
        values = meta[column].str.lower()
        table[name] = values.isin(present).astype(float).where(values != "")
        specs.append(LabSpec(name, label, "", (0.0, 0.0), (0.0, 1.0)))
    return _as_cells(table), specs


def _as_cells(table: pd.DataFrame) -> pd.DataFrame:
    return table.apply(lambda c: c.map(lambda v: "" if pd.isna(v) else f"{v:g}"))
