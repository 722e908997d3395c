"""Inputs of a data set that cannot be read: quarantined, not fatal.

An unreadable file (an empty note, a corrupt scan, a lab value in an unknown unit) makes that modality
missing for that case; a case left with nothing is dropped from every split. The problems are kept with
their manifest row, summarised at the end of a run and written to `data_report.json`. `strict` (the
`--strict` flag) aborts at the first one instead, naming the row.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

EXAMPLES = 20  # problems listed in full in the report (all are counted)


@dataclass(frozen=True)
class Problem:
    row: int  # 1-based data row of the manifest (line row + 1 of a CSV with a header)
    case_id: str
    modality: str
    reason: str

    def text(self) -> str:
        return f"manifest row {self.row} (case {self.case_id}), {self.modality}: {self.reason}"


@dataclass
class Quarantine:
    problems: list[Problem] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)  # 0-based rows left with no readable modality

    def add(self, i: int, case_id: str, modality: str, reason: str) -> None:
        self.problems.append(Problem(i + 1, case_id, modality, reason))

    def __bool__(self) -> bool:
        return bool(self.problems)

    def report(self, n_cases: int) -> dict:
        return {"cases": n_cases, "unreadable_inputs": len(self.problems),
                "unreadable_by_modality": dict(Counter(p.modality for p in self.problems)),
                "cases_dropped": len(self.dropped), "dropped_rows": [r + 1 for r in self.dropped[:EXAMPLES]],
                "examples": [p.__dict__ for p in self.problems[:EXAMPLES]]}

    def summary(self) -> str:
        """A few lines for the end of a run (empty when nothing was quarantined)."""
        if not self.problems:
            return ""
        by = ", ".join(f"{m} {n}" for m, n in Counter(p.modality for p in self.problems).items())
        lines = [f"data: {len(self.problems)} unreadable input(s) counted as missing ({by}); "
                 f"{len(self.dropped)} case(s) dropped with nothing left"]
        lines += [f"  {p.text()}" for p in self.problems[:5]]
        return "\n".join(lines)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"problems": [p.__dict__ for p in self.problems], "dropped": self.dropped}),
                        encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> "Quarantine":
        if not path.exists():
            return cls()
        d = json.loads(path.read_text(encoding="utf-8"))
        return cls([Problem(**p) for p in d["problems"]], list(d["dropped"]))

    @classmethod
    def merge(cls, parts: list["Quarantine"]) -> "Quarantine":
        q = cls([p for part in parts for p in part.problems], sorted(r for part in parts for r in part.dropped))
        q.problems.sort(key=lambda p: p.row)
        return q
