"""Demo cases for the app, and the review study's cases: complete test cases of the open model's data (the
embedded cohort for the shipped model), a few per diagnosis, rare diagnoses included.

The two sets are disjoint. The Case explorer shows every model output of its demo cases (probabilities,
every attribution method), so a study item on one of them could be matched to the explorer's page and
the blinded model or method named; the study therefore draws the next complete test cases of each
diagnosis, never one the explorer offers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.data.dataset import Dataset
from core.names import display_name

DEMO_PER_CLASS = 2  # the explorer's demo cases per diagnosis
STUDY_PER_CLASS = 2  # the review study's cases per diagnosis


@dataclass(frozen=True)
class DemoCase:
    row: int
    case_id: str
    diagnosis: str
    rare: bool

    @property
    def label(self) -> str:
        kind = "rare" if self.rare else "typical"
        return f"{display_name(self.diagnosis)} · {kind} · {self.case_id}"


def _complete_test_rows(ds: Dataset) -> dict[str, list[int]]:
    """Each diagnosis's complete test cases in cohort order (stable for a given cohort)."""
    presence = ds.presence()
    test = set(ds.indices("test").tolist())
    return {c: [int(i) for i in np.flatnonzero((ds.labels == k) & presence.all(1)) if int(i) in test]
            for k, c in enumerate(ds.classes)}


def _cases(ds: Dataset, rows: dict[str, list[int]]) -> list[DemoCase]:
    return [DemoCase(r, ds.case_id(r), c, c in ds.spec.rare_classes) for c, rs in rows.items() for r in rs]


def demo_cases(ds: Dataset, per_class: int = DEMO_PER_CLASS) -> list[DemoCase]:
    """The first `per_class` complete test cases of each diagnosis (the Case explorer's demo cases)."""
    return _cases(ds, {c: rows[:per_class] for c, rows in _complete_test_rows(ds).items()})


def study_cases(ds: Dataset, per_class: int = STUDY_PER_CLASS, demo_per_class: int = DEMO_PER_CLASS) -> list[DemoCase]:
    """The review study's cases: the next `per_class` complete test cases of each diagnosis after the
    explorer's `demo_per_class`, so that no study case is ever a demo case. A diagnosis with too few
    cases left contributes what it has (every diagnosis is covered whenever the cohort allows it)."""
    rows = _complete_test_rows(ds)
    return _cases(ds, {c: rs[demo_per_class:demo_per_class + per_class] for c, rs in rows.items()})
