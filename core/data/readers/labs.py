"""Lab tables: a CSV in wide form (a column per lab) or long form (name, value, unit), mapped onto the
dataset's lab catalogue, converted to its canonical units and checked against plausible ranges."""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from typing import Iterable, Literal, Mapping

import numpy as np
import pandas as pd

from core.data.readers.note import decode_text
from core.data.readers.source import Source, read_source
from core.data.spec import LabSpec, normalise_name, normalise_unit
from core.errors import LabError

Unknown = Literal["error", "warn"]
_NAME_COLS = {"name", "lab", "labname", "test", "testname", "analyte", "parameter", "item", "component"}
_VALUE_COLS = {"value", "result", "val", "resultvalue", "numericvalue"}
_UNIT_COLS = {"unit", "units", "uom", "resultunit"}
# Columns that identify a person or a time and are never labs: dropped without being read or stored.
_IDENTIFIER_COLS = {"id", "caseid", "patientid", "patient", "patientname", "name", "mrn", "subject", "subjectid",
                    "dob", "birthdate", "dateofbirth", "date", "time", "datetime", "timestamp", "encounterid",
                    "accession", "accessionnumber", "visitid", "admissionid"}
_MISSING = {"", "na", "n/a", "nan", "null", "none", "-", "--", "?", "missing", "not done", "nd"}
_HEADER_UNIT = re.compile(r"^(?P<name>.*?)\s*[\(\[](?P<unit>[^\)\]]*)[\)\]]\s*$")


@dataclass(frozen=True)
class LabValue:
    name: str
    value: float  # canonical unit
    unit: str
    flag: str  # 'L', 'H' or ''
    given: str  # the value and unit as written in the file (for the report)
    given_unit: str = ""  # the unit as written ('' when none was): tells whether the value was converted

    @property
    def converted(self) -> bool:
        """Whether the value was written in another unit than the model's (so `given` differs from `value`)."""
        return bool(self.given_unit) and normalise_unit(self.given_unit) != normalise_unit(self.unit)


@dataclass
class LabPanel:
    """One case's labs in canonical units; labs not measured are simply absent."""

    values: dict[str, LabValue] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # lab name → why the value given was not used

    def __len__(self) -> int:
        return len(self.values)

    def vector(self, catalogue: Iterable[LabSpec]) -> np.ndarray:
        """Values in catalogue order, NaN where not measured."""
        return np.array([self.values[lab.name].value if lab.name in self.values else np.nan for lab in catalogue],
                        dtype=np.float32)

    def table(self, catalogue: Iterable[LabSpec], measured_only: bool = False) -> pd.DataFrame:
        """The labs as read, ready to show (e.g. right after an upload): one row per catalogue lab, indexed by
        its internal name, with display columns Lab (the friendly label), Value (in the model's unit), Unit,
        Reference, Flag ('high', 'low' or '') and As given (the value and unit as written, when it was
        converted or qualified, e.g. '7.0 mmol/L' for a glucose the model takes in mg/dL). A refused value
        reads 'refused' with the reason in As given.

        Every cell is text, so a table never shows None or NaN: an unmeasured lab reads 'not measured', or
        with `measured_only` is left out and counted in `table.attrs["not_measured"]`.
        """
        rows, index, missing = [], [], 0
        for lab in catalogue:
            v = self.values.get(lab.name)
            if lab.name in self.refused:  # given but not used: shown as such, never as not measured
                rows.append({"Lab": lab.label, "Value": "refused", "Unit": lab.unit, "Reference": lab.ref_text(),
                             "Flag": "", "As given": self.refused[lab.name].removeprefix(f"{lab.label}: ")})
                index.append(lab.name)
                continue
            if v is None and measured_only:
                missing += 1
                continue
            as_given = v.given if v is not None and (v.converted or "(" in v.given) else ""
            rows.append({"Lab": lab.label, "Value": _format_value(v.value) if v else "not measured",
                         "Unit": lab.unit, "Reference": lab.ref_text(), "Flag": _FLAG_WORDS[v.flag] if v else "",
                         "As given": as_given})
            index.append(lab.name)
        table = pd.DataFrame(rows, index=pd.Index(index, name="lab"),
                             columns=["Lab", "Value", "Unit", "Reference", "Flag", "As given"])
        table.attrs["not_measured"] = missing
        return table


_FLAG_WORDS = {"H": "high", "L": "low", "": ""}


def _format_value(value: float) -> str:
    """Four significant digits (whole numbers from 1000 up), never in exponent form: a BNP of 12,000 pg/mL
    reads 12000, not 1.2e+04."""
    if abs(value) >= 1000:
        return f"{value:.0f}"
    return np.format_float_positional(value, precision=4, unique=False, fractional=False, trim="-")


def parse_number(raw: object) -> tuple[float | None, str | None]:
    """A lab value as written → (number or None when missing, a note when the value was qualified)."""
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return None, None
    if isinstance(raw, (int, float, np.integer, np.floating)):
        return float(raw), None
    s = str(raw).strip()
    if s.lower() in _MISSING:
        return None, None
    note = None
    if s[:1] in "<>≤≥":
        note = "given as a detection limit"
        s = s.lstrip("<>≤≥= ").strip()
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    elif re.fullmatch(r"-?\d+,\d+", s):
        s = s.replace(",", ".")
    try:
        value = float(s)
    except ValueError:
        raise ValueError(f"'{raw}' is not a number") from None
    if math.isnan(value):
        return None, None
    if math.isinf(value):
        raise ValueError(f"'{raw}' is not a finite number")
    return value, note


class LabMatcher:
    """Maps names as found in files (aliases, any case and punctuation) onto catalogue entries."""

    def __init__(self, catalogue: Iterable[LabSpec]):
        self.catalogue = list(catalogue)
        self.by_name: dict[str, LabSpec] = {}
        for lab in self.catalogue:
            for n in lab.names():
                self.by_name[n] = lab

    def match(self, name: str) -> LabSpec | None:
        return self.by_name.get(normalise_name(name))


def convert(lab: LabSpec, raw: object, unit: str | None, label: str) -> tuple[float, str] | None:
    """One raw value → (canonical value, what was written); None when missing; LabError when impossible."""
    try:
        value, note = parse_number(raw)
    except ValueError as e:
        raise LabError(label, f"{lab.label}: {e}") from None
    if value is None:
        return None
    unit = _written_unit(unit)
    conv = lab.conversion(unit)
    if conv is None:
        raise LabError(label, f"{lab.label}: unit '{unit}' is not known; use one of {', '.join(lab.accepted_units())}")
    canonical = value * conv[0] + conv[1]
    lo, hi = lab.plausible
    if canonical < 0 <= lo:
        raise LabError(label, f"{lab.label}: value {value:g} is negative")
    if not lo <= canonical <= hi:
        raise LabError(label, f"{lab.label}: {value:g} {unit or lab.unit} is outside the plausible range "
                              f"{lo:g}–{hi:g} {lab.unit}; check the value and its unit")
    given = f"{raw}{' ' + unit if unit else ''}" + (f" ({note})" if note else "")
    return canonical, given


def _written_unit(unit: str | None) -> str | None:
    """The unit as written, None when the file gave none (an empty cell, 'NA', ...)."""
    return None if unit is None or str(unit).strip().lower() in _MISSING else str(unit).strip()


def labs_from_items(items: Iterable[tuple[str, object, str | None]], catalogue: Iterable[LabSpec],
                    label: str = "labs", unknown: Unknown = "warn") -> LabPanel:
    """(name, value, unit) triples → LabPanel. The one place where names, units and ranges are checked.

    Every value is checked on its own. A value that cannot be used (not a number, an unknown unit, outside
    the plausible range, given twice differently) is refused with its reason in `LabPanel.refused` and the
    other values are kept; all refusals are listed in one warning. With `unknown="error"` (training data,
    where a bad value means a wrong spec or file) any refusal or unknown name raises one LabError listing
    them all. A table none of whose values can be used raises LabError with `refused` filled in.
    """
    matcher = LabMatcher(catalogue)
    panel = LabPanel()
    unknown_names: list[str] = []
    refused: dict[str, str] = {}
    matched = False  # a known name, even with its value missing
    for name, raw, unit in items:
        lab = matcher.match(str(name))
        if lab is None:
            if normalise_name(str(name)) not in _IDENTIFIER_COLS:
                unknown_names.append(str(name))
            continue
        matched = True
        try:
            result = convert(lab, raw, unit, label)
        except LabError as e:
            refused[lab.name] = e.problem
            continue
        if result is None:
            continue
        value, given = result
        previous = panel.values.get(lab.name)
        if previous is not None and not math.isclose(previous.value, value, rel_tol=0.02, abs_tol=1e-9):
            refused[lab.name] = f"{lab.label} is given twice with different values ({previous.given} and {given})"
            continue
        panel.values[lab.name] = LabValue(lab.name, value, lab.unit, lab.flag(value), given,
                                          _written_unit(unit) or "")
        if "detection limit" in given:
            panel.warnings.append(f"{lab.label}: {given.split(' (')[0]} taken at the detection limit")
    for name in refused:  # a lab refused once is refused, even if another row gave it acceptably
        panel.values.pop(name, None)
    if refused:
        _refuse(panel, refused, label, unknown)
    if unknown_names:
        _unknown_labs(panel, unknown_names, matched, matcher.catalogue, label, unknown)
    return panel


def _refuse(panel: LabPanel, refused: dict[str, str], label: str, unknown: Unknown) -> None:
    """Values that cannot be used, all named at once: an error for training data or when nothing is left,
    else kept aside in `panel.refused` (the other values are used)."""
    listed = "; ".join(refused.values())
    n = len(refused)
    if unknown == "error":
        raise LabError(label, f"{n} value{'s' if n > 1 else ''} cannot be used: {listed}", refused)
    if not panel.values:
        raise LabError(label, f"none of its values can be used ({n} refused): {listed}", refused)
    panel.refused = refused
    kept = len(panel.values)
    panel.warnings.append(f"{n} value{'s' if n > 1 else ''} refused and not used ({listed}); the other {kept} "
                          f"lab{'s are' if kept > 1 else ' is'} used")


def _unknown_labs(panel: LabPanel, names: list[str], matched: bool, catalogue: list[LabSpec], label: str,
                  unknown: Unknown) -> None:
    """Names outside the catalogue: an error when asked for (training data: a wrong spec), else ignored
    with a warning, unless nothing known is left, when the table cannot be this model's labs at all."""
    known = ", ".join(lab.name for lab in catalogue)
    listed = ", ".join(repr(n) for n in names)
    if unknown == "error":
        raise LabError(label, f"unknown lab(s) {listed}; known labs: {known}")
    if not matched:
        raise LabError(label, f"none of the labs in this table is known to this model (ignored: {listed}); "
                              f"known labs: {known}")
    panel.warnings.append(f"ignored unknown lab(s) {listed} (this model knows: {known})")


def read_lab_frame(data: bytes, label: str) -> pd.DataFrame:
    """CSV/TSV bytes → a DataFrame of strings (delimiter sniffed)."""
    text = decode_text(data, label)
    try:
        df = pd.read_csv(io.StringIO(text), sep=None, engine="python", dtype=str, keep_default_na=False,
                         skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, TypeError, IndexError) as e:
        raise LabError(label, f"is not a readable CSV table ({str(e).splitlines()[0][:120]})") from None
    except Exception as e:  # noqa: BLE001 - the python CSV engine raises csv.Error and friends on junk
        raise LabError(label, f"is not a readable CSV table ({type(e).__name__})") from None
    df.columns = [str(c).strip() for c in df.columns]
    if df.empty or len(df.columns) == 0:
        raise LabError(label, "contains no lab values (an empty table)")
    return df


def frame_items(df: pd.DataFrame, label: str, one_case: bool = True) -> list[tuple[str, object, str | None]]:
    """Long or wide table → (name, value, unit) triples."""
    cols = {normalise_name(c): c for c in df.columns}
    name_col = next((cols[c] for c in cols if c in _NAME_COLS), None)
    value_col = next((cols[c] for c in cols if c in _VALUE_COLS), None)
    if name_col is not None and value_col is not None:
        unit_col = next((cols[c] for c in cols if c in _UNIT_COLS), None)
        return [(str(r[name_col]), r[value_col], r[unit_col] if unit_col else None) for _, r in df.iterrows()]
    if one_case and len(df) > 1:
        raise LabError(label, f"has {len(df)} rows in wide form; one case per file is expected "
                              "(or use long form: columns name, value, unit)")
    items = []
    for col in df.columns:
        m = _HEADER_UNIT.match(col)
        name, unit = (m["name"], m["unit"]) if m else (col, None)
        items.append((name, df[col].iloc[0], unit))
    return items


def read_labs(source: Source, catalogue: Iterable[LabSpec], name: str | None = None,
              unknown: Unknown = "warn") -> LabPanel:
    """Read one case's lab table (CSV, wide or long) from a path or bytes."""
    data, label = read_source(source, name, LabError)
    return labs_from_items(frame_items(read_lab_frame(data, label), label), catalogue, label, unknown)


def labs_from_mapping(values: Mapping[str, object], catalogue: Iterable[LabSpec], label: str = "labs",
                      units: Mapping[str, str] | None = None, unknown: Unknown = "warn") -> LabPanel:
    """{lab name: value} (canonical units unless `units` says otherwise) → LabPanel, e.g. from the app's table."""
    units = units or {}
    return labs_from_items(((k, v, units.get(k)) for k, v in values.items()), catalogue, label, unknown)
