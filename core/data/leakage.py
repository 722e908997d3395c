"""Does a note state the answer? Two checks for data whose notes may carry the label (issue 24).

Before training (`python -m core validate`): for each class, the share of its notes that name it (the
class's name, and its synonyms from the knowledge graph: "PE", "PTX", "CHF", ...) against the share of
the other classes' notes that name it. A report written after the image was read names its finding far
more often in its own class; a differential or a history names classes about as often in any class.
After training (`train`): a note-only test AUROC far above every other single modality's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

# a class's notes name it at least this often, and at least LIFT times as often as other classes' notes do
SHARE = 0.25
LIFT = 2.0
# after training: a note alone this good, and this far above every other single modality
NOTE_ALONE = 0.95
NOTE_MARGIN = 0.10


def _pattern(names: Sequence[str]) -> re.Pattern:
    """Any of `names` as whole words; all-capital abbreviations case-sensitively ("PE", not "pe" in "type")."""
    parts = [re.escape(n) if n.isupper() else f"(?i:{re.escape(n)})" for n in sorted(names, key=len, reverse=True)]
    return re.compile(r"(?<![\w-])(?:" + "|".join(parts) + r")(?![\w-])")


def naming_shares(notes: Sequence[str | None], labels: np.ndarray, classes: Sequence[str],
                  names: dict[str, tuple[str, ...]]) -> list[dict]:
    """Per class: how many of its notes there are, the share that name it, the share of the other classes' notes
    that name it, and whether that looks like the label leaking into the note."""
    out = []
    for k, c in enumerate(classes):
        pattern = _pattern(names[c])
        said = np.array([n is not None and bool(pattern.search(n)) for n in notes])
        has = np.array([n is not None for n in notes])
        own, other = has & (labels == k), has & (labels != k)
        share = float(said[own].mean()) if own.any() else 0.0
        base = float(said[other].mean()) if other.any() else 0.0
        out.append({"class": c, "notes": int(own.sum()), "share_naming_it": share, "share_of_other_classes": base,
                    "flagged": bool(own.any() and share >= SHARE and share >= LIFT * max(base, 1e-9))})
    return out


def note_alone_leak(test_metrics: dict, modalities: Sequence[tuple[str, str]]) -> str | None:
    """A warning when a text modality alone reaches NOTE_ALONE test AUROC and beats every other single modality by
    NOTE_MARGIN: the notes may state the answer (see the module)."""
    single = {name: test_metrics.get(name, {}).get("auroc") for name, _ in modalities}
    for name, kind in modalities:
        alone, others = single.get(name), [v for n, v in single.items() if n != name and v is not None]
        if kind == "text" and alone is not None and others and alone >= NOTE_ALONE and alone >= max(others) + NOTE_MARGIN:
            return (f"'{name}' alone reaches test AUROC {alone:.3f}, {alone - max(others):.2f} above the best other "
                    f"single modality: the notes may state the answer (a report written after the image was read, a "
                    f"diagnosis in the text); check them with `python -m core validate`")
    return None
