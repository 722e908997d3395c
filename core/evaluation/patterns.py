"""Availability patterns: which modalities a case has. All 2^M - 1 non-empty subsets, and random
missingness at a given rate (as MARIA reports at 30 % and 50 %)."""

from __future__ import annotations

import itertools

import numpy as np


def availability_patterns(m: int) -> list[tuple[bool, ...]]:
    """Every non-empty subset of m modalities, fullest first, then by size and order."""
    pats = [p for p in itertools.product([True, False], repeat=m) if any(p)]
    return sorted(pats, key=lambda p: (-sum(p), [not x for x in p]))


def pattern_name(pattern: tuple[bool, ...], names: list[str]) -> str:
    return "+".join(n for n, keep in zip(names, pattern) if keep)


def random_missing(present: np.ndarray, rate: float | np.ndarray, seed: int) -> np.ndarray:
    """A drop mask hiding each present modality with probability `rate` (a number, or one per case as a
    column (n, 1): missingness not at random), keeping at least one per case."""
    rng = np.random.default_rng(seed)
    drop = (rng.random(present.shape) < rate) & present
    gone = ~(present & ~drop).any(1)
    for r in np.flatnonzero(gone):
        keep = rng.choice(np.flatnonzero(present[r]))
        drop[r, keep] = False
    return drop
