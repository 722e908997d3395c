"""Demo cases for the app and the review study: complete test cases of the embedded cohort, a few
per diagnosis, rare diagnoses included."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.data.dataset import Dataset
from core.names import display_name


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


def demo_cases(ds: Dataset, per_class: int = 2) -> list[DemoCase]:
    """The first `per_class` complete test cases of each diagnosis (stable for a given cohort)."""
    presence = ds.presence()
    test = set(ds.indices("test").tolist())
    out = []
    for k, c in enumerate(ds.classes):
        rows = [int(i) for i in np.flatnonzero((ds.labels == k) & presence.all(1)) if int(i) in test][:per_class]
        out += [DemoCase(r, ds.case_id(r), c, c in ds.spec.rare_classes) for r in rows]
    return out
