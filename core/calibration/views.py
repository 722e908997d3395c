"""Views of cases: the same case predicted from several subsets of its present modalities.

The synthesis confidence answers "would the answer stay the same if the real modality were added?".
Its training data and its test both come from views: for a case predicted from the given modalities S
(modality i missing but actually available), the answer with S is compared with the answer with S ∪ {i}.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from itertools import combinations

import numpy as np

from core.features import FeatureTable
from core.inference import TableOutput, predict_table
from core.model.robustmdiff import RobustMDiff


@dataclass
class Views:
    rows: np.ndarray  # (n,) table row of each view
    given: np.ndarray  # (n, M) the modalities each view was predicted from
    out: TableOutput  # the predictions of the views

    def pairs(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Views without modality i (source) and the same case's view with i added (reference)."""
        index = {(int(r), g.tobytes()): v for v, (r, g) in enumerate(zip(self.rows, self.given))}
        src, ref = [], []
        for v, (r, g) in enumerate(zip(self.rows, self.given)):
            if g[i]:
                continue
            with_i = g.copy()
            with_i[i] = True
            w = index.get((int(r), with_i.tobytes()))
            if w is not None:
                src.append(v)
                ref.append(w)
        return np.array(src, int), np.array(ref, int)

    def answer(self) -> np.ndarray:
        return self.out.probs.argmax(1)

    def of_cases(self, cases: np.ndarray) -> "Views":
        """The views of the given table rows only (every field of the predictions sliced alike)."""
        keep = np.isin(self.rows, cases)
        o = self.out
        out = replace(o, **{f.name: getattr(o, f.name)[keep] for f in fields(o)
                            if isinstance(getattr(o, f.name), np.ndarray) and f.name != "sample_probs"},
                      sample_probs=o.sample_probs[:, keep],
                      assumed={k: tuple(a[keep] for a in v) for k, v in o.assumed.items()})
        return Views(self.rows[keep], self.given[keep], out)


def subsets(present: np.ndarray, max_views: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Non-empty subsets of a case's present modalities; beyond `max_views`, the full set and a random sample."""
    idx = np.flatnonzero(present)
    out = []
    for size in range(len(idx), 0, -1):
        for combo in combinations(idx, size):
            g = np.zeros(len(present), bool)
            g[list(combo)] = True
            out.append(g)
    if len(out) > max_views:
        keep = [0, *sorted(rng.choice(np.arange(1, len(out)), size=max_views - 1, replace=False))]
        out = [out[k] for k in keep]
    return out


def case_views(model: RobustMDiff, table: FeatureTable, idx: np.ndarray, seed: int = 0, max_views: int = 15,
               device=None, describe: bool = True, on_batch: Callable[[int, int], None] | None = None) -> Views:
    """Predict every case of `idx` from each subset of its present modalities (with the sampler settings
    and per-case noise of prediction). `on_batch(views done, views)`: progress, in batches of 128 then."""
    rng = np.random.default_rng(0)
    rows, given = [], []
    for r in idx:
        for g in subsets(table.present[r], max_views, rng):
            rows.append(r)
            given.append(g)
    rows_a, given_a = np.array(rows, int), np.array(given, bool).reshape(len(rows), -1)
    out = predict_table(model, table, rows_a, table.present[rows_a] & ~given_a, seed=seed, device=device, describe=describe,
                        batch_size=128 if on_batch else 256, on_batch=on_batch)
    return Views(rows_a, given_a, out)
