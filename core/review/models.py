"""The models whose explanations the review study compares: RobustMDiff and its comparison models.

The design's human evaluation rates explanations of RobustMDiff beside those of comparison models trained
by the same harness (`python -m core train --method NAME`, core/evaluation/methods.py). The study runs on the
model the app opened (core/open_model.py, issue 26: a `Study`) and uses
  - RobustMDiff: the open checkpoint (the shipped one, checkpoints/default, unless RMD_CHECKPOINT names another);
  - every comparison checkpoint trained next to it (DIR/comparison/NAME; the shipped one's in
    checkpoints/comparison/),
or, when RMD_REVIEW_MODELS is set, exactly the checkpoint folders it lists (comma-separated; relative paths
are taken from the repository root). Every model must read the study's data spec: the same classes, the
same modalities and the same lab fields as the cohort whose cases reviewers rate (by default, those the
shipped checkpoint was trained on); one that does not is skipped with the reason, which the study admin
sees (issue 29: a model of other classes was shown to reviewers as "model prediction: 0 (80 %)"). Each
model is named by its own meta.json (its method; the folder name if it has none), never by a default.
The comparison models the design names and that are not there are reported with the command that trains
them; the study then runs with the models it has.

Ratings of a study on another model or data than the shipped model on the embedded cohort are stored under
its models' names qualified by the study's key (`robustmdiff@breast-cancer-1a2b3c4d5e`): the review database
keeps its schema, a study on another model never overwrites or mixes with another's ratings, and the export
says which study (model and data) each rating is of.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import RobustMDiffError
from core.names import display_name
from core.paths import DEFAULT_CHECKPOINT, ROOT
from core.open_model import shown
from core.review.store import REFERENCE_MODEL

if TYPE_CHECKING:
    from core.open_model import OpenModel

ENV = "RMD_REVIEW_MODELS"
COMPARISON_DIR = ROOT / "checkpoints" / "comparison"
COMPARISONS = ("dropout_0.5", "late_fusion")  # the design's comparison models: modality dropout, late fusion
SHIPPED_STUDY = ""  # the key of the shipped model's study on the embedded cohort (every rating from before issue 26)
QUALIFIER = "@"  # stored model name = method name @ study key (other studies only)


@dataclass(frozen=True)
class Study:
    """Which model the review study runs on, and on which data: its key qualifies the stored model names."""

    key: str  # SHIPPED_STUDY, or e.g. breast-cancer-1a2b3c4d5e (data set name, hash of the weights and the data)
    reference: Path  # the open checkpoint: the study's RobustMDiff
    comparison_dir: Path  # where its comparison models are trained (train --method NAME --out DIR/comparison/NAME)
    checkpoint_text: str  # the checkpoint and the data, in words, for the study admin and the export
    data_text: str
    data_arg: str = ""  # `--data …` of the train commands (empty for the shipped study: the embedded cohort)

    @property
    def shipped(self) -> bool:
        return self.key == SHIPPED_STUDY

    def describe(self) -> str:
        return f"model {self.checkpoint_text} · data {self.data_text}"

    def stored(self, name: str) -> str:
        """The name a rating of model `name` is stored under in this study."""
        return name if self.shipped else f"{name}{QUALIFIER}{self.key}"

    def owns(self, stored: str) -> bool:
        """Whether a stored model name is one of this study's."""
        return QUALIFIER not in stored if self.shipped else stored.endswith(f"{QUALIFIER}{self.key}")

    def local(self, ratings: list[dict]) -> list[dict]:
        """This study's ratings, their model under its plain name (what the summaries and the paired test read)."""
        return [{**r, "model": method_of(r.get("model") or REFERENCE_MODEL)} for r in ratings
                if self.owns(r.get("model") or REFERENCE_MODEL)]


SHIPPED = Study(SHIPPED_STUDY, DEFAULT_CHECKPOINT, DEFAULT_CHECKPOINT.parent / "comparison", "checkpoints/default",
                "embedded synthetic cohort")


def method_of(stored: str) -> str:
    """The model's plain name in a stored model name (`late_fusion@key` -> late_fusion)."""
    return stored.rsplit(QUALIFIER, 1)[0]


def study_key_of(stored: str) -> str:
    """The study a stored model name belongs to (SHIPPED_STUDY for a plain name)."""
    return stored.rsplit(QUALIFIER, 1)[1] if QUALIFIER in stored else SHIPPED_STUDY


def with_study(ratings: list[dict], studies: dict[str, str]) -> list[dict]:
    """Ratings of any study, each with its model's plain name and the study it is of in words (`studies`:
    ReviewStore.studies()), as the export writes them."""
    def text(key: str) -> str:
        return studies.get(key) or (SHIPPED.describe() if key == SHIPPED_STUDY else f"study {key}")

    return [{**r, "model": method_of(r.get("model") or REFERENCE_MODEL),
             "study": text(study_key_of(r.get("model") or REFERENCE_MODEL))} for r in ratings]


def study_of(model: "OpenModel", manifest_csv: str) -> Study:
    """The study on the open model and its data (`manifest_csv`: the data's manifest, as the prepared
    explanations' fingerprint reads it). The shipped model on the embedded cohort is the shipped study; any
    other model or data gets a key of its own, from its weights and its data, so retraining it or pointing it
    at other data starts a new study rather than mixing ratings of different explanations."""
    from core.checkpoint import read_meta

    if model.shipped and model.data is None:
        return SHIPPED
    meta = read_meta(model.checkpoint)
    digest = hashlib.sha256(f"{meta.get('weights_sha256')}\0{manifest_csv}".encode()).hexdigest()[:10]
    name = re.sub(r"[^a-z0-9]+", "-", str((meta.get("spec") or {}).get("name") or "data").lower()).strip("-")
    data = shown(Path(model.data)) if model.data is not None else "embedded synthetic cohort"
    return Study(f"{name or 'data'}-{digest}", model.checkpoint,
                 (DEFAULT_CHECKPOINT.parent if model.shipped else model.checkpoint) / "comparison",
                 shown(model.checkpoint), data, f"--data {shlex.quote(data)} " if model.data is not None else "")


@dataclass(frozen=True)
class ReviewModel:
    name: str  # the name stored with each rating (never shown to reviewers): the method, e.g. robustmdiff,
    #            late_fusion, qualified by the study's key in a study on another model (Study.stored)
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


def train_command(name: str, study: Study = SHIPPED) -> str:
    """The command that trains a missing model of the study, next to its reference and on its data."""
    if study.shipped:
        if name == REFERENCE_MODEL:
            return "python -m core train --out checkpoints/default"
        return f"python -m core train --method {name} --out checkpoints/comparison/{name}"
    if name == REFERENCE_MODEL:
        return f"python -m core train {study.data_arg}--out {shlex.quote(study.checkpoint_text)}"
    return (f"python -m core train --method {name} {study.data_arg}"
            f"--out {shlex.quote(shown(study.comparison_dir / name))}")


def _candidates(study: Study) -> list[Path]:
    listed = os.environ.get(ENV, "").strip()
    if listed:
        paths = [Path(p.strip()).expanduser() for p in listed.split(",") if p.strip()]
        return [p if p.is_absolute() else ROOT / p for p in paths]
    folder = COMPARISON_DIR if study.shipped else study.comparison_dir
    comparison = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    return [study.reference, *comparison]


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


def review_models(reference: dict | None = None, study: Study = SHIPPED) -> Lineup:
    """The models of the study, RobustMDiff first, and what is missing or unusable (with the reason).
    `reference`: the spec of the study's cases (`cohort_spec`); by default the shipped checkpoint's.
    `study`: the model the study runs on (its reference checkpoint, where its comparison models are, and the
    key its models' names are stored under); by default the shipped one."""
    from core.checkpoint import WEIGHTS, read_meta

    reference = reference or _reference_spec()
    found: list[ReviewModel] = []
    skipped: list[tuple[str, str]] = []
    for path in _candidates(study):
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
        # its own name, never a default one; the study's reference (the shipped checkpoint, or one trained
        # without --method, whose meta records none) is RobustMDiff, under which the study's ratings are stored
        is_reference = path.resolve() in (Path(DEFAULT_CHECKPOINT).resolve(), study.reference.resolve())
        name = str(meta.get("method") or (REFERENCE_MODEL if is_reference else path.name)).replace(QUALIFIER, "_")
        if any(method_of(m.name) == name for m in found):
            skipped.append((str(path), f"a second checkpoint of {name}"))
            continue
        found.append(ReviewModel(study.stored(name), display_name(name), path, meta))
    found.sort(key=lambda m: (method_of(m.name) != REFERENCE_MODEL, m.name))
    models: list[ReviewModel] = []
    for m in found:  # without a reference spec: every model must read the same spec as the first
        why = spec_mismatch(spec_of(m.meta), spec_of(models[0].meta)) if models and reference is None else None
        if why:
            skipped.append((str(m.path), f"{why} (the study's spec taken from {models[0].name})"))
            continue
        models.append(m)
    names = {method_of(m.name) for m in models}
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
