"""The synthesis confidence against non-generative confidences (issue 28): the views are labelled by whether the
answer stays, agreement under test-time modality dropout is counted over the views with one modality fewer, and
the paired bootstrap over cases finds an informative score better than an uninformative one (and not otherwise)."""

from __future__ import annotations

from dataclasses import fields

import numpy as np

from core.calibration.views import Views
from core.evaluation.confidence_alternatives import REFERENCE, compare, dropout_agreement, labelled_pairs
from core.inference import TableOutput

SUBSETS = [(1, 1), (1, 0), (0, 1)]  # two modalities: both, the first alone, the second alone


def _views(answers: list[list[int]]) -> Views:
    """Cases whose views (SUBSETS, in order) predict the given classes (one-hot, two classes)."""
    rows, given, probs = [], [], []
    for r, per_view in enumerate(answers):
        for g, a in zip(SUBSETS, per_view):
            rows.append(r)
            given.append(g)
            probs.append([0.8, 0.2] if a == 0 else [0.3, 0.7])
    out = TableOutput(**({f.name: None for f in fields(TableOutput)} | {"probs": np.array(probs)}))
    return Views(np.array(rows), np.array(given, bool), out)


def test_pairs_and_dropout_agreement():
    views = _views([[0, 0, 1], [1, 0, 0]])
    src, kept, which = labelled_pairs(views, 2)
    # case 0: without modality 1 (view 1, answer 0) vs both (0): kept; without modality 0 (view 2, answer 1): changed
    assert dict(zip(zip(src.tolist(), which.tolist()), kept.tolist())) == {(2, 0): False, (1, 1): True,
                                                                           (5, 0): False, (4, 1): False}
    agreement = dropout_agreement(views)
    assert agreement[0] == 0.5 and agreement[3] == 0.0  # one of the two single views agrees / none does
    assert np.isnan(agreement[[1, 2, 4, 5]]).all()  # one modality: nothing to drop


def test_the_paired_bootstrap_separates_an_informative_score_from_noise():
    rng = np.random.default_rng(0)
    n = 300
    case = np.repeat(np.arange(n // 3), 3)
    kept = rng.random(n) < 0.6
    informative = kept + rng.normal(0, 0.5, n)
    noise = rng.random(n)
    rows = compare({REFERENCE: (case, kept, informative), "noise": (case, kept, noise),
                    "the same": (case, kept, informative.copy())}, n_boot=300)
    by = {r["score"]: r for r in rows}
    assert by["noise"]["difference"] > 0.2 and by["noise"]["ci95"][0] > 0 and by["noise"]["p"] < 0.05
    assert by["the same"]["difference"] == 0 and by["the same"]["p"] == 1.0
