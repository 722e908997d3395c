"""Importers: turn a copy of a public dataset the user already has into a RobustMDiff data folder
(manifest.csv + spec.yaml + per-case files + import_report.json). Nothing is downloaded.

One file per published layout: `mimic.py` (MIMIC-CXR-JPG + MIMIC-IV hosp + MIMIC-IV-Note) and `derm7pt.py`.
This module holds what they share: finding and reading the published tables, the output folder, and writing
the result. `python -m core import <dataset> --help` is the command line.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from core.data.spec import DatasetSpec
from core.errors import InputError

REPORT_NAME = "import_report.json"
# What an import writes: a folder holding only these (or nothing) may be replaced by a new import.
_OWNED_FILES = ("manifest.csv", "spec.yaml", REPORT_NAME)
_OWNED_DIRS = ("images", "notes", "labs")


class DatasetImportError(InputError):
    """A copy of a public dataset that does not have the published layout (a file or column is missing)."""

    kind = "import"


def find_table(root: Path, name: str, subdirs: Sequence[str] = ()) -> Path | None:
    """`root/name` or `root/name.gz` (also under `root/<subdir>/`), or None when absent."""
    for folder in (root, *(root / s for s in subdirs)):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def require_table(root: Path, name: str, subdirs: Sequence[str] = ()) -> Path:
    path = find_table(root, name, subdirs)
    if path is None:
        where = ", ".join(str(Path(root.name, s)) for s in ("", *subdirs))
        raise DatasetImportError(root.name or str(root), f"has no {name} or {name}.gz (looked in {where})")
    return path


def read_table(path: Path, columns: Iterable[str], **kwargs: Any) -> pd.DataFrame:
    """A published CSV (gzip read transparently) with at least `columns`, which are the ones returned."""
    columns = list(columns)
    try:
        header = pd.read_csv(path, nrows=0).columns
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DatasetImportError(path.name, f"cannot be read ({str(e).splitlines()[0][:120]})") from None
    require_columns(header, columns, path.name)
    try:
        return pd.read_csv(path, usecols=columns, **kwargs)
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise DatasetImportError(path.name, f"cannot be read ({str(e).splitlines()[0][:120]})") from None


def read_table_chunks(path: Path, columns: Iterable[str], chunksize: int = 2_000_000, **kwargs: Any):
    """Like `read_table`, in chunks: MIMIC-IV's labevents and radiology notes do not fit in memory whole."""
    columns = list(columns)
    require_columns(pd.read_csv(path, nrows=0).columns, columns, path.name)
    try:
        yield from pd.read_csv(path, usecols=columns, chunksize=chunksize, **kwargs)
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise DatasetImportError(path.name, f"cannot be read ({str(e).splitlines()[0][:120]})") from None


def require_columns(have: Iterable[str], need: Iterable[str], label: str) -> None:
    missing = [c for c in need if c not in set(have)]
    if missing:
        raise DatasetImportError(label, f"is missing column(s) {missing}; is this the published file?")


def check_out(out: Path) -> None:
    """Refuse an output folder that holds anything but an earlier import (checked before reading any input)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DatasetImportError(out.name, "exists and is not a folder")
    if out.exists():
        entries = {p.name for p in out.iterdir()}
        if entries and REPORT_NAME not in entries:
            raise DatasetImportError(out.name, "is not empty and holds no earlier import; choose a new --out")
        foreign = entries - set(_OWNED_FILES) - set(_OWNED_DIRS)
        if foreign:
            raise DatasetImportError(out.name, f"holds files an import did not write ({sorted(foreign)[:3]}); "
                                               "choose a new --out")


def prepare_out(out: Path) -> Path:
    """Create the output folder; replace an earlier import there, never anything else."""
    out = Path(out)
    check_out(out)
    if out.exists():
        for name in _OWNED_DIRS:
            shutil.rmtree(out / name, ignore_errors=True)
        for name in _OWNED_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def place_image(src: Path, out: Path, case_id: str, copy: bool) -> str:
    """The manifest entry for an image: its absolute path in the user's copy (nothing duplicated), or, with
    `copy`, a copy under out/images/ so that the folder stands alone."""
    if not copy:
        return str(src.resolve())
    dest = out / "images" / f"{case_id}{src.suffix.lower()}"
    dest.parent.mkdir(exist_ok=True)
    shutil.copyfile(src, dest)
    return dest.relative_to(out).as_posix()


def has_words(text: str) -> bool:
    """The same test the note reader applies: a note without a word is refused at training."""
    return bool(re.search(r"[^\W\d_]{2,}", text))


def rare_classes(labels: pd.Series, classes: Sequence[str], below: float) -> list[str]:
    """Classes whose share of the imported cases is under `below` (but present): oversampled in training."""
    share = labels.value_counts(normalize=True)
    return [c for c in classes if 0 < share.get(c, 0.0) < below]


def write_dataset(out: Path, manifest: pd.DataFrame, spec: DatasetSpec, report: dict[str, Any]) -> None:
    """manifest.csv, spec.yaml and import_report.json (what was read, kept, dropped and why)."""
    manifest.to_csv(out / "manifest.csv", index=False)
    spec.save(out / "spec.yaml")
    (out / REPORT_NAME).write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")


def label_counts(manifest: pd.DataFrame, label: str = "label", split: str = "split") -> dict[str, dict[str, int]]:
    """{split: {class: count}} for the report (the whole set under 'all' when there is no split column)."""
    if split not in manifest.columns:
        return {"all": {str(k): int(v) for k, v in manifest[label].value_counts().sort_index().items()}}
    return {str(s): {str(k): int(v) for k, v in g[label].value_counts().sort_index().items()}
            for s, g in manifest.groupby(split, sort=True)}
