"""A data set on disk: a dataset spec plus a manifest (CSV or Parquet, one row per case).

This is the one path by which data reaches the model: the embedded cohort is read through it exactly
as a user's own data is.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from core.data.identity import DataIdentity, data_identity
from core.data.readers import LabPanel, Scan, read_labs, read_note, read_scan
from core.data.quarantine import Quarantine
from core.data.readers.labs import labs_from_mapping
from core.data.spec import DatasetSpec
from core.errors import InputError, ManifestError

SPEC_NAMES = ("spec.yaml", "spec.yml", "spec.json", "dataset.yaml", "dataset.yml", "dataset.json")  # searched in order
MANIFEST_NAMES = ("manifest.csv", "manifest.parquet")
SPLITS = ("train", "val", "test")

Modal = Scan | str | LabPanel


@dataclass
class CaseInputs:
    """One case as the model reads it: each modality's parsed input, or None when absent."""

    case_id: str
    inputs: dict[str, Modal | None]
    label: str | None = None
    # values the user gave that could not be used, by modality (lab → reason): a modality none of whose values
    # could be used is absent (None) and synthesized, and these labs are then shown as refused, never as assumed
    refused: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def present(self) -> list[str]:
        return [k for k, v in self.inputs.items() if v is not None]


def _find(folder: Path, names: tuple[str, ...], what: str, hint: str = "") -> Path:
    for n in names:
        if (folder / n).exists():
            return folder / n
    raise ManifestError(folder.name or str(folder), f"has no {what} (looked for {', '.join(names)}){hint}")


def _spec_hint(folder: Path) -> str:
    """How to name a spec of another name: the option, and the candidate files the folder holds."""
    candidates = sorted(p.name for p in folder.glob("*") if p.suffix.lower() in (".yaml", ".yml", ".json"))[:5]
    found = f"; it holds {', '.join(candidates)}" if candidates else ""
    return f"{found}; name the spec file with --spec FILE"


def resolve_source(data: str | Path | None = None, spec: str | Path | None = None,
                   recorded: dict | None = None) -> Path | None:
    """The one path `Dataset.open` reads for a data folder `data` and a spec file `spec` (either may be left
    out): the spec file when it is named, else the folder. `recorded` is a checkpoint's `data_source`
    (`Dataset.source()`): a folder without a spec of a standard name then uses the spec file name the
    checkpoint was trained with, so `score --data DIR` finds the same spec again. None when neither is given."""
    folder = Path(data) if data else None
    if spec:
        path = Path(spec)
        if folder is not None and not path.is_absolute() and not path.exists() and (folder / path).exists():
            path = folder / path  # --data DIR --spec dataset.yaml: the name within the folder
        if not path.is_file():
            raise InputError("--spec", f"{spec} is not a file")
        if folder is not None and (not folder.is_dir() or folder.resolve() != path.resolve().parent):
            raise InputError("--spec", f"{path.name} must lie in the data folder {folder} (the manifest is read "
                                       "beside the spec, and its file paths from there); or give --spec alone")
        return path
    if folder is None:
        return None
    named = Path(str((recorded or {}).get("spec") or "")).name
    if folder.is_dir() and named and not any((folder / n).exists() for n in SPEC_NAMES) and (folder / named).is_file():
        return folder / named
    return folder


def recorded_source(recorded: dict | None) -> Path | None:
    """The spec file of a checkpoint's recorded data (`Dataset.source()`) when it still exists here."""
    spec = (recorded or {}).get("spec")
    return Path(spec) if spec and Path(spec).is_file() else None


def stable_split(groups: pd.Series, labels: pd.Series, fractions=(0.7, 0.15, 0.15)) -> np.ndarray:
    """Train/val/test from a hash of each group's id (the patient; the case itself when there is no group key):
    every case of a group lands in its group's split, the same group always in the same split, stratified by
    the label of each group's first case."""
    first = ~groups.duplicated().to_numpy()
    group_label = dict(zip(groups[first], labels[first]))
    split_of: dict[str, str] = {}
    for label in labels[first].unique():
        members = [g for g, lab in group_label.items() if lab == label]
        order = sorted(members, key=lambda g: hashlib.sha256(str(g).encode()).hexdigest())
        n_train = round(len(order) * fractions[0])
        n_val = round(len(order) * fractions[1])
        for rank, g in enumerate(order):
            split_of[g] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return np.array([split_of[g] for g in groups], dtype=object)


class Dataset:
    def __init__(self, spec: DatasetSpec, manifest: pd.DataFrame, root: Path):
        self.spec, self.root = spec, root
        label = manifest.attrs.get("name", "manifest")
        needed = [spec.label, spec.case_id] + ([spec.group] if spec.group else []) + [
            c for m in spec.modalities for c in ([m.column] if m.column else list(m.columns))]
        missing = [c for c in needed if c not in manifest.columns]
        if missing:
            raise ManifestError(label, f"is missing column(s) {missing}; it has {list(manifest.columns)}")
        if manifest.empty:
            raise ManifestError(label, "has no rows")
        manifest = manifest.reset_index(drop=True)
        if manifest[spec.label].isna().any() or (manifest[spec.label].astype(str).str.strip() == "").any():
            raise ManifestError(label, f"has rows without a label in column '{spec.label}'")
        labels = manifest[spec.label].astype(str)
        self.classes = list(spec.classes) or sorted(labels.unique())
        unknown = sorted(set(labels) - set(self.classes))
        if unknown:
            raise ManifestError(label, f"has labels {unknown} that are not among the spec's classes {self.classes}")
        # the patient of each case; a case without one is a group of its own
        ids = manifest[spec.case_id].astype(str)
        groups = manifest[spec.group].astype(str).str.strip() if spec.group else ids
        groups = groups.where(~groups.isin(["", "nan", "None"]), "case:" + ids)
        if spec.split and spec.split in manifest.columns:
            splits = manifest[spec.split].astype(str).str.lower().to_numpy()
            bad = sorted(set(splits) - set(SPLITS))
            if bad:
                raise ManifestError(label, f"column '{spec.split}' has values {bad}; use train, val or test")
        else:
            splits = stable_split(groups, labels)
        self.manifest = manifest
        self.groups = groups.to_numpy()
        self.splits = splits
        self.given_splits = splits.copy()  # as the manifest or the hash gave them, before any `drop`
        self._identity: DataIdentity | None = None
        self.spec_path: Path | None = None  # the files it was opened from (`open` sets them)
        self.manifest_path: Path | None = None
        self.quarantine = Quarantine()  # filled when features are extracted (core/features.py)
        self.labels = np.array([self.classes.index(x) for x in labels], dtype=np.int64)

    # ---- opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, manifest: str | Path | None = None, spec: str | Path | None = None) -> "Dataset":
        """`path`: a folder with a spec (one of SPEC_NAMES) and manifest.csv, or a spec file (then `manifest`
        or the default beside it). `spec`: the spec file of the folder `path` when it has another name."""
        path = Path(path)
        if not path.exists():
            raise ManifestError(path.name, "does not exist")
        if spec is not None:
            path = resolve_source(path, spec)
        spec_path = _find(path, SPEC_NAMES, "dataset spec", _spec_hint(path)) if path.is_dir() else path
        folder = spec_path.parent
        manifest_path = Path(manifest) if manifest else _find(folder, MANIFEST_NAMES, "manifest")
        spec = DatasetSpec.load(spec_path)
        try:
            if manifest_path.suffix == ".parquet":
                df = pd.read_parquet(manifest_path)
            else:
                df = pd.read_csv(manifest_path, dtype=str, keep_default_na=False)
        except FileNotFoundError:
            raise ManifestError(manifest_path.name, "file not found") from None
        except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise ManifestError(manifest_path.name, f"cannot be read ({str(e).splitlines()[0][:120]})") from None
        df.attrs["name"] = manifest_path.name
        ds = cls(spec, df, manifest_path.parent)
        ds.spec_path, ds.manifest_path = spec_path.resolve(), manifest_path.resolve()
        return ds

    # ---- access -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.manifest)

    def case_id(self, i: int) -> str:
        return str(self.manifest.at[i, self.spec.case_id])

    def indices(self, split: str | None = None) -> np.ndarray:
        return np.arange(len(self)) if split is None else np.flatnonzero(self.splits == split)

    def path(self, i: int, modality: str) -> Path | None:
        """The file of a file-backed modality, or None when the case does not have it."""
        col = self.spec.modality(modality).column
        if col is None:
            return None
        value = self.manifest.at[i, col]
        if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
            return None
        p = Path(str(value))
        return p if p.is_absolute() else self.root / p

    def is_present(self, i: int, modality: str) -> bool:
        m = self.spec.modality(modality)
        if m.column:
            return self.path(i, modality) is not None
        row = self.manifest.loc[i, list(m.columns)]
        return bool(row.astype(str).str.strip().replace({"nan": ""}).ne("").any())

    def presence(self) -> np.ndarray:
        """(cases, modalities) bool matrix of what each case has."""
        return np.array([[self.is_present(i, m) for m in self.spec.modality_names] for i in range(len(self))])

    def load(self, i: int, quarantine: Quarantine | None = None) -> CaseInputs:
        """Read every present modality of case `i` through the same readers the app uses. With `quarantine`,
        an input that cannot be read counts as missing and is recorded there; without, the error names the
        manifest row and is raised."""
        inputs: dict[str, Modal | None] = {}
        for m in self.spec.modalities:
            try:
                inputs[m.name] = self.read(i, m.name) if self.is_present(i, m.name) else None
            except InputError as e:
                if quarantine is None:
                    raise type(e)(f"manifest row {i + 1} (case {self.case_id(i)}), {m.name}: {e.source}", e.problem) from None
                quarantine.add(i, self.case_id(i), m.name, str(e))
                inputs[m.name] = None
        return CaseInputs(self.case_id(i), inputs, self.classes[self.labels[i]])

    def read(self, i: int, modality: str) -> Modal:
        """One present input of case `i`, parsed by its reader (raises InputError when it cannot be read)."""
        m = self.spec.modality(modality)
        if m.type == "image":
            return read_scan(self.path(i, m.name))
        if m.type == "text":
            return read_note(self.path(i, m.name))
        if m.column:  # strict about lab names: an unknown one in a data set means a wrong spec
            return read_labs(self.path(i, m.name), self.spec.lab_features(m.name), unknown="error")
        values = {c: self.manifest.at[i, c] for c in m.columns}
        return labs_from_mapping(values, self.spec.lab_features(m.name), label=f"columns {list(m.columns)}",
                                 unknown="error")

    def groups_across_splits(self) -> dict[str, list[str]]:
        """Groups (patients) whose cases lie in more than one split, with those splits: a manifest's own split
        column can put one patient in training and test, which inflates every test figure."""
        seen = pd.DataFrame({"group": self.groups, "split": self.given_splits}).groupby("group")["split"].unique()
        return {str(g): sorted(s) for g, s in seen.items() if len(s) > 1}

    def subset(self, rows: np.ndarray | list[int]) -> "Dataset":
        """The cases `rows` alone, each keeping its split and its patient (a data set of its own: its own
        fingerprint, so its own feature cache)."""
        sub = Dataset(self.spec, self.manifest.iloc[list(rows)], self.root)
        sub.splits, sub.given_splits = self.splits[rows].copy(), self.given_splits[rows].copy()
        sub.spec_path, sub.manifest_path = self.spec_path, self.manifest_path
        return sub

    def drop(self, rows: list[int]) -> None:
        """Take cases out of every split (those left with no readable modality)."""
        self.splits = self.splits.astype(object)
        self.splits[rows] = "dropped"

    def source(self) -> dict[str, str]:
        """Where this data was read from (absolute paths; empty when not opened from files): what a checkpoint
        records so that later commands find the same spec again (`resolve_source`, `recorded_source`)."""
        if self.spec_path is None or self.manifest_path is None:
            return {}
        return {"folder": str(self.root.resolve()), "spec": str(self.spec_path), "manifest": str(self.manifest_path)}

    def identity(self) -> DataIdentity:
        """This data's content identity (core/data/identity.py); read once per Dataset."""
        if self._identity is None:
            self._identity = data_identity(self)
        return self._identity

    def fingerprint(self) -> str:
        """sha256 of the content (spec, cases, decoded inputs), not of the files' bytes: which data a model saw."""
        return self.identity().fingerprint
