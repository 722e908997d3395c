"""The models whose explanations the review study compares: RobustMDiff and its comparison models.

The design's human evaluation rates explanations of RobustMDiff beside those of comparison models trained
by the same harness (`python -m core train --method NAME`, core/evaluation/methods.py). The study uses
  - RobustMDiff: the shipped checkpoint, checkpoints/default;
  - every folder of checkpoints/comparison/ that holds a valid checkpoint,
or, when RMD_REVIEW_MODELS is set, exactly the checkpoint folders it lists (comma-separated; relative paths
are taken from the repository root). Every model must read the study's data spec: the same classes, the
same modalities and the same lab fields as the cohort whose cases reviewers rate (by default, those the
shipped checkpoint was trained on); one that does not is skipped with the reason, which the study admin
sees (issue 29: a model of other classes was shown to reviewers as "model prediction: 0 (80 %)"). Each
model is named by its own meta.json (its method; the folder name if it has none), never by a default.
The comparison models the design names and that are not there are reported with the command that trains
them; the study then runs with the models it has.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import RobustMDiffError
from core.names import display_name
from core.paths import DEFAULT_CHECKPOINT, ROOT
from core.review.store import REFERENCE_MODEL

ENV = "RMD_REVIEW_MODELS"
COMPARISON_DIR = ROOT / "checkpoints" / "comparison"
COMPARISONS = ("dropout_0.5", "late_fusion")  # the design's comparison models: modality dropout, late fusion


@dataclass(frozen=True)
class ReviewModel:
    name: str  # the method name, e.g. robustmdiff, late_fusion (stored with each rating; never shown to reviewers)
    label: str  # e.g. "Late fusion" (for the study admin)
    path: Path
    meta: dict = field(compare=False, repr=False, hash=False)


@dataclass(frozen=True)
class Lineup:
    models: list[ReviewModel]
    missing: list[str]  # models of the design without a checkpoint here
    skipped: list[tuple[str, str]]  # (folder, why it is not used)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]

    def key(self) -> tuple:
        """Changes when a model is added, removed or retrained (for caches keyed on the line-up)."""
        return tuple((m.name, str(m.path), m.meta.get("meta_sha256")) for m in self.models)


def train_command(name: str) -> str:
    if name == REFERENCE_MODEL:
        return "python -m core train --out checkpoints/default"
    return f"python -m core train --method {name} --out checkpoints/comparison/{name}"


def _candidates() -> list[Path]:
    listed = os.environ.get(ENV, "").strip()
    if listed:
        paths = [Path(p.strip()).expanduser() for p in listed.split(",") if p.strip()]
        return [p if p.is_absolute() else ROOT / p for p in paths]
    comparison = sorted(p for p in COMPARISON_DIR.iterdir() if p.is_dir()) if COMPARISON_DIR.is_dir() else []
    return [DEFAULT_CHECKPOINT, *comparison]


def spec_of(meta: dict) -> dict:
    """What a checkpoint reads: its classes, modalities (name, type) and lab fields per tabular modality."""
    info = meta.get("data_info") or {}
    return {"classes": list(info.get("classes") or []),
            "modalities": [list(m) for m in info.get("modalities") or []],
            "labs": {k: list(v) for k, v in (info.get("labs") or {}).items()}}


def cohort_spec(ds) -> dict:
    """The same for a Dataset: what a model must read to explain its cases."""
    from core.features import modalities_of

    mods, labs = modalities_of(ds.spec)
    return {"classes": list(ds.classes), "modalities": [list(m) for m in mods],
            "labs": {k: list(v) for k, v in labs.items()}}


def _short(values: list) -> str:
    shown = ", ".join("/".join(map(str, v)) if isinstance(v, list) else str(v) for v in values[:4])
    return shown + (f", … ({len(values)} in all)" if len(values) > 4 else "")


def spec_mismatch(spec: dict, reference: dict) -> str | None:
    """Why a model of `spec` cannot explain cases read with `reference` (None: it can)."""
    for part, what in (("classes", "classes"), ("modalities", "modalities")):
        if spec[part] != reference[part]:
            return f"its {what} ({_short(spec[part]) or 'none'}) are not the study's ({_short(reference[part])})"
    if spec["labs"] != reference["labs"]:
        return "its lab fields are not the study's"
    return None


def _reference_spec() -> dict | None:
    """By default the study's cases are those the shipped checkpoint was trained on."""
    from core.checkpoint import read_meta

    try:
        return spec_of(read_meta(DEFAULT_CHECKPOINT))
    except (RobustMDiffError, OSError):
        return None


def review_models(reference: dict | None = None) -> Lineup:
    """The models of the study, RobustMDiff first, and what is missing or unusable (with the reason).
    `reference`: the spec of the study's cases (`cohort_spec`); by default the shipped checkpoint's."""
    from core.checkpoint import WEIGHTS, read_meta

    reference = reference or _reference_spec()
    found: list[ReviewModel] = []
    skipped: list[tuple[str, str]] = []
    for path in _candidates():
        try:
            meta = read_meta(path)
        except (RobustMDiffError, OSError) as e:
            skipped.append((str(path), str(e)))
            continue
        if not (path / WEIGHTS).is_file():
            skipped.append((str(path), f"no {WEIGHTS}"))
            continue
        why = spec_mismatch(spec_of(meta), reference) if reference is not None else None
        if why:
            skipped.append((str(path), f"{why}: it cannot explain the study's cases"))
            continue
        # its own name, never a default one; the shipped checkpoint (whose meta may predate the recorded
        # method) is RobustMDiff, under which the study's ratings are stored
        name = str(meta.get("method") or (REFERENCE_MODEL if path.resolve() == Path(DEFAULT_CHECKPOINT).resolve()
                                          else path.name))
        if any(m.name == name for m in found):
            skipped.append((str(path), f"a second checkpoint of {name}"))
            continue
        found.append(ReviewModel(name, display_name(name), path, meta))
    found.sort(key=lambda m: (m.name != REFERENCE_MODEL, m.name))
    models: list[ReviewModel] = []
    for m in found:  # without a reference spec: every model must read the same spec as the first
        why = spec_mismatch(spec_of(m.meta), spec_of(models[0].meta)) if models and reference is None else None
        if why:
            skipped.append((str(m.path), f"{why} (the study's spec taken from {models[0].name})"))
            continue
        models.append(m)
    names = {m.name for m in models}
    missing = [n for n in (REFERENCE_MODEL, *COMPARISONS) if n not in names]
    return Lineup(models, missing, skipped)


class Predictors:
    """Each model's checkpoint loaded once, on first use, from any thread (the page or the preparing worker)."""

    def __init__(self, models: list[ReviewModel], loaded: dict | None = None, device: str | None = None):
        self._paths = {m.name: m.path for m in models}
        self._loaded = dict(loaded or {})
        self._device = device
        self._lock = threading.Lock()

    def get(self, name: str):
        from core.inference import Predictor

        with self._lock:  # loading twice at once would only waste memory; loads are rare and short
            if name not in self._loaded:
                if name not in self._paths:
                    raise RobustMDiffError(f"model {name!r} is not part of this review study")
                self._loaded[name] = Predictor.load(self._paths[name], device=self._device)
            return self._loaded[name]
