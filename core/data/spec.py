"""The dataset spec: which modalities a data set has, where the manifest keeps them, and its lab catalogue.

A spec is a small YAML (or JSON) file beside a manifest. The embedded cohort writes one; bring-your-own
data writes its own (see README, "Your own data"). Example:

    name: my-study
    label: diagnosis            # manifest column with the class label
    case_id: case_id            # manifest column with a (pseudonymous) case id
    split: split                # optional column with train/val/test
    group: patient_id           # optional column with the patient (or any group of related cases): every
                                # split keeps a group whole, so no patient is in both training and test
    classes: [normal, pneumonia]  # optional: order of the classes (else sorted labels)
    rare_classes: []            # optional: reported separately by the evaluation
    modalities:
      - {name: cxr, type: image, column: image_path,
         expect: {modality: [CR, DX], body_part: [CHEST]}}  # optional: what DICOM headers may say
      - {name: note, type: text, column: note_path}
      - {name: labs, type: tabular, column: labs_path}           # one lab file per case, or
      # {name: labs, type: tabular, columns: [wbc, crp]}          # values inline in the manifest
    labs:                        # the catalogue that tabular modalities draw on
      - {name: wbc, label: White blood cells, unit: 10^9/L, ref: [4, 11], plausible: [0, 500],
         aliases: [leukocytes], alt_units: {/uL: 0.001}, log: true}
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from core.errors import SpecError

ModalityType = Literal["image", "text", "tabular"]
MODALITY_TYPES: tuple[str, ...] = ("image", "text", "tabular")


def normalise_unit(unit: str) -> str:
    """Canonical spelling of a unit so that 'x10^9/L', '10*9/l' and '10^9 /L' compare equal."""
    u = unit.strip().lower().replace("µ", "u").replace("μ", "u").replace("mcg", "ug")
    u = re.sub(r"\s+", "", u)
    u = u.replace("^", "").replace("*", "").replace("×", "x")
    u = re.sub(r"^x(?=10)", "", u)
    return u


def normalise_name(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", name.strip().lower())


@dataclass(frozen=True)
class LabSpec:
    """One entry of the lab catalogue; values are stored in `unit` (the canonical unit)."""

    name: str
    label: str
    unit: str
    ref: tuple[float | None, float | None] = (None, None)
    plausible: tuple[float, float] = (0.0, float("inf"))
    aliases: tuple[str, ...] = ()
    # other unit -> [scale, offset]: canonical = value * scale + offset (offset only for temperatures)
    alt_units: dict[str, tuple[float, float]] = field(default_factory=dict)
    log: bool = False  # log-transform before normalising (skewed markers such as CRP, BNP, D-dimer)

    def names(self) -> set[str]:
        return {normalise_name(n) for n in (self.name, self.label, *self.aliases)}

    def conversion(self, unit: str | None) -> tuple[float, float] | None:
        """(scale, offset) from `unit` to the canonical unit, or None when the unit is unknown."""
        if unit is None or normalise_unit(unit) in ("", normalise_unit(self.unit)):
            return (1.0, 0.0)
        for alt, conv in self.alt_units.items():
            if normalise_unit(alt) == normalise_unit(unit):
                return conv
        return None

    def accepted_units(self) -> list[str]:
        return [self.unit, *self.alt_units]

    def flag(self, value: float) -> str:
        """'L', 'H' or '' against the reference range."""
        low, high = self.ref
        if low is not None and value < low:
            return "L"
        if high is not None and value > high:
            return "H"
        return ""

    def ref_text(self) -> str:
        low, high = self.ref
        if low is None and high is None:
            return ""
        if low is None:
            return f"< {high:g}"
        if high is None:
            return f"> {low:g}"
        return f"{low:g}–{high:g}"


@dataclass(frozen=True)
class ModalitySpec:
    name: str
    type: ModalityType
    column: str | None = None  # manifest column holding a file path (relative to the manifest)
    columns: tuple[str, ...] = ()  # tabular only: lab values inline in the manifest
    features: tuple[str, ...] = ()  # tabular only: which catalogue entries (default: all)
    # image only: what the DICOM header may say, e.g. {"modality": ("CR", "DX"), "body_part": ("CHEST",)}
    # (core/guard/domain.py); a file whose header says otherwise is refused unless the user overrides it
    expect: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass
class DatasetSpec:
    name: str
    label: str
    modalities: list[ModalitySpec]
    case_id: str = "case_id"
    split: str | None = None
    group: str | None = None  # the patient: cases of one group never span two splits
    classes: list[str] = field(default_factory=list)
    rare_classes: list[str] = field(default_factory=list)
    labs: list[LabSpec] = field(default_factory=list)
    image_size: int = 128

    def __post_init__(self) -> None:
        names = [m.name for m in self.modalities]
        if not names:
            raise SpecError("spec", "declares no modalities")
        if len(set(names)) != len(names):
            raise SpecError("spec", f"modality names must be unique, got {names}")
        for m in self.modalities:
            if m.type not in MODALITY_TYPES:
                raise SpecError("spec", f"modality '{m.name}' has type '{m.type}'; use one of {MODALITY_TYPES}")
            if m.type != "tabular" and not m.column:
                raise SpecError("spec", f"modality '{m.name}' needs a 'column' with file paths")
            if m.type == "tabular" and not (m.column or m.columns):
                raise SpecError("spec", f"tabular modality '{m.name}' needs 'column' (files) or 'columns' (inline)")
            if m.expect:
                from core.guard.domain import check_expect
                check_expect(m.name, m.type, m.expect)
            unknown = set(m.features) - {lab.name for lab in self.labs}
            if unknown:
                raise SpecError("spec", f"modality '{m.name}' lists features not in the lab catalogue: {sorted(unknown)}")
        if any(m.type == "tabular" for m in self.modalities) and not self.labs:
            raise SpecError("spec", "a tabular modality needs a 'labs' catalogue")
        if not set(self.rare_classes) <= set(self.classes):
            raise SpecError("spec", f"rare_classes {self.rare_classes} must be among classes {self.classes}")

    # ---- lookup -------------------------------------------------------------------------------
    @property
    def modality_names(self) -> list[str]:
        return [m.name for m in self.modalities]

    def modality(self, name: str) -> ModalitySpec:
        for m in self.modalities:
            if m.name == name:
                return m
        raise KeyError(name)

    def lab_features(self, modality: str) -> list[LabSpec]:
        """The catalogue entries a tabular modality uses, in catalogue order: its `features`, else for inline
        values those its `columns` name (so three groups of one table never claim each other's fields), else
        the whole catalogue."""
        m = self.modality(modality)
        if m.features:
            return [lab for lab in self.labs if lab.name in set(m.features)]
        if m.columns:
            columns = {normalise_name(c) for c in m.columns}
            return [lab for lab in self.labs if lab.names() & columns]
        return list(self.labs)

    # ---- (de)serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["modalities"] = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in m.items() if v not in (None, (), [], {})}
                           for m in d["modalities"]]
        for m in d["modalities"]:
            if "expect" in m:
                m["expect"] = {k: list(v) for k, v in m["expect"].items()}
        d["labs"] = [_lab_to_dict(lab) for lab in self.labs]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DatasetSpec":
        if not isinstance(d, dict):
            raise SpecError("spec", "must be a mapping with keys such as 'label' and 'modalities'")
        missing = [k for k in ("label", "modalities") if k not in d]
        if missing:
            raise SpecError("spec", f"missing required keys: {missing}")
        known = {"name", "label", "modalities", "case_id", "split", "group", "classes", "rare_classes", "labs",
                 "image_size"}
        extra = set(d) - known
        if extra:
            raise SpecError("spec", f"unknown keys {sorted(extra)}; known keys are {sorted(known)}")
        try:
            mods = [ModalitySpec(name=m["name"], type=m["type"], column=m.get("column"),
                                 columns=tuple(m.get("columns", ())), features=tuple(m.get("features", ())),
                                 expect=_expect(m.get("expect")))
                    for m in d["modalities"]]
            labs = [_lab_from_dict(x) for x in d.get("labs", [])]
        except (KeyError, TypeError, ValueError) as e:
            raise SpecError("spec", f"malformed modality or lab entry ({e})") from None
        return cls(name=d.get("name", "dataset"), label=d["label"], modalities=mods,
                   case_id=d.get("case_id", "case_id"), split=d.get("split"), group=d.get("group"),
                   classes=[str(c) for c in d.get("classes", [])],
                   rare_classes=[str(c) for c in d.get("rare_classes", [])], labs=labs,
                   image_size=int(d.get("image_size", 128)))

    @classmethod
    def load(cls, path: str | Path) -> "DatasetSpec":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise SpecError(path.name, f"cannot be read ({e.strerror})") from None
        try:
            d = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (yaml.YAMLError, json.JSONDecodeError) as e:
            raise SpecError(path.name, f"is not valid YAML/JSON ({str(e).splitlines()[0]})") from None
        try:
            return cls.from_dict(d)
        except SpecError as e:
            raise SpecError(path.name, e.problem) from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True), encoding="utf-8")


def _lab_to_dict(lab: LabSpec) -> dict[str, Any]:
    d: dict[str, Any] = {"name": lab.name, "label": lab.label, "unit": lab.unit,
                         "ref": list(lab.ref), "plausible": list(lab.plausible)}
    if lab.aliases:
        d["aliases"] = list(lab.aliases)
    if lab.alt_units:
        d["alt_units"] = {u: list(c) for u, c in lab.alt_units.items()}
    if lab.log:
        d["log"] = True
    return d


def _lab_from_dict(d: dict[str, Any]) -> LabSpec:
    alt = {}
    for unit, conv in (d.get("alt_units") or {}).items():
        conv = [conv] if isinstance(conv, (int, float)) else list(conv)
        alt[str(unit)] = (float(conv[0]), float(conv[1]) if len(conv) > 1 else 0.0)
    ref = d.get("ref") or [None, None]
    plausible = d.get("plausible") or [0.0, float("inf")]
    return LabSpec(name=str(d["name"]), label=str(d.get("label", d["name"])), unit=str(d.get("unit", "")),
                   ref=(_num(ref[0]), _num(ref[1])), plausible=(float(plausible[0]), float(plausible[1])),
                   aliases=tuple(str(a) for a in d.get("aliases", ())), alt_units=alt, log=bool(d.get("log", False)))


def _expect(d: Any) -> dict[str, tuple[str, ...]]:
    """`expect: {modality: [CR, DX], body_part: CHEST}` → upper-case tuples (a single value may be a string)."""
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ValueError("'expect' must be a mapping such as {modality: [CR, DX], body_part: [CHEST]}")
    return {str(k): tuple(str(v).strip().upper() for v in ([vals] if isinstance(vals, str) else vals))
            for k, vals in d.items()}


def _num(x: Any) -> float | None:
    return None if x is None else float(x)
