"""Missing-data regimes of the evaluation (issue 17): where, if anywhere, restoring missing modalities with
the diffusion model helps.

The default evaluation trains on the cohort as it comes (about a third of the training cases complete,
modalities missing for reasons unrelated to the diagnosis' rarity) and tests with modalities switched off
at random. Each regime changes one of those conditions:

- `complete_5`, `complete_10`, `complete_20`: only that share of the training and validation cases keeps
  every modality; each other complete case loses one modality drawn at random. Fewer complete cases leave
  less to learn how modalities relate, which the denoiser needs and which masked training imitates.
- `mnar`: the same training; at test, modalities go missing more often for severe and rare cases (as on
  real wards, where the sickest patients skip tests), at about the same average rate as the random
  conditions. Every evaluation scores these conditions (`mnar_30`, `mnar_50`), so this regime is the
  natural one read on them.
- `labels_10`: only 10 % of the training cases keep their label (stratified); the rest are unlabelled,
  and only the denoiser may learn from them (phase 2). Validation keeps its labels (model selection and
  calibration).
- `redundant`: a cohort variant whose modalities say more of the same thing (`redundant_cohort`), so that
  a missing modality is more predictable from the others.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.data.dataset import Dataset
from core.evaluation.patterns import random_missing
from core.features import FeatureTable


@dataclass(frozen=True)
class Regime:
    name: str
    title: str
    short: str  # for a figure's axis
    complete_share: float | None = None  # share of training and validation cases with every modality
    label_share: float | None = None  # share of training cases that keep their label
    cohort: str = "default"  # default | redundant


REGIMES: dict[str, Regime] = {r.name: r for r in (
    Regime("natural", "the cohort as it comes", "as it comes"),
    Regime("complete_5", "5 % complete training cases", "5 % complete", complete_share=0.05),
    Regime("complete_10", "10 % complete training cases", "10 % complete", complete_share=0.10),
    Regime("complete_20", "20 % complete training cases", "20 % complete", complete_share=0.20),
    Regime("mnar", "missing not at random at test (severe and rare cases miss more)", "not at random"),
    Regime("labels_10", "10 % of training labels (the rest unlabelled, for the denoiser)", "10 % labels",
           label_share=0.10),
    Regime("redundant", "a cohort whose modalities share more information", "redundant cohort", cohort="redundant"),
)}
# the methods every regime compares: RobustMDiff, its ablation without diffusion, the two strongest
# baselines of the default evaluation, and the MUST-style generative baseline
REGIME_METHODS = "robustmdiff,no_diffusion,dropout_0.5,masked_attention,must_style"
MNAR_RATES = (0.3, 0.5)
SEED = 2024  # the regimes' own draws: the same in every method and seed, so that methods differ only in method


def regime(name: str) -> Regime:
    if name not in REGIMES:
        raise ValueError(f"unknown regime {name!r}; choose from {', '.join(REGIMES)}")
    return REGIMES[name]


def limit_complete(table: FeatureTable, rows: np.ndarray, share: float, seed: int = SEED) -> FeatureTable:
    """The same table where, among `rows`, only round(share × len(rows)) cases keep every modality (fewer if
    fewer were complete); each other complete case loses one modality at random. Other rows are unchanged."""
    rng = np.random.default_rng(seed)
    present = table.present.copy()
    complete = rows[present[rows].all(1)]
    keep = int(round(share * len(rows)))
    reduce = rng.permutation(complete)[keep:]
    present[reduce, rng.integers(0, present.shape[1], len(reduce))] = False
    t = copy.copy(table)
    t.present = present
    return t


def labelled_rows(labels: np.ndarray, rows: np.ndarray, share: float, seed: int = SEED) -> np.ndarray:
    """A stratified `share` of `rows` (sorted), at least two per class present, so that rare classes stay
    learnable at all."""
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(labels[rows]):
        of_c = rows[labels[rows] == c]
        out.append(rng.choice(of_c, max(min(2, len(of_c)), int(round(share * len(of_c)))), replace=False))
    return np.sort(np.concatenate(out))


def case_severity(ds: Dataset) -> np.ndarray:
    """Each case's severity in [0, 1] from its truth file (the embedded cohort writes one); 0.5 where unknown."""
    out = np.full(len(ds), 0.5)
    for i, path in enumerate(ds.manifest.get("truth_path", [None] * len(ds))):
        if isinstance(path, str) and path:
            try:
                out[i] = float(json.loads((Path(ds.root) / path).read_text()).get("severity", 0.5))
            except (OSError, ValueError):
                pass
    return out


def mnar_missing(present: np.ndarray, labels: np.ndarray, severity: np.ndarray, rare: list[int], rate: float,
                 seed: int) -> np.ndarray:
    """`random_missing` with a probability per case that grows with its severity and doubles for rare
    diagnoses, scaled so that its mean over the cases is `rate`; capped at 0.9, so slightly below `rate`
    where the cap binds (at 0.5 on the embedded cohort: 3.8 % of cases capped, mean 0.49)."""
    weight = (0.5 + severity) * np.where(np.isin(labels, rare), 2.0, 1.0)
    return random_missing(present, np.clip(rate * weight / weight.mean(), 0.0, 0.9)[:, None], seed)
