"""'Which test next': the rule chosen on validation, its test interval against chance, and the one wording.

Synthetic views (no model): cases with three modalities seen through every subset, probabilities drawn at
random, so the modality whose real value moves the answer most is known; a rule's scores are then built
to agree with it or not.
"""

from __future__ import annotations

import json
from itertools import combinations

import numpy as np

from core.calibration.next_test import (candidates, choose_rule, grouped_interval, next_test_report, top1_hits,
                                        validation_summary)
from core.calibration.views import Views
from core.inference import TableOutput
from core.prediction import NEXT_TEST_RULES, Prediction, next_test_evidence
from core.paths import DEFAULT_CHECKPOINT

M = 3


def synthetic_views(n_cases: int, seed: int) -> Views:
    rng = np.random.default_rng(seed)
    subsets = [np.isin(np.arange(M), c) for k in range(M, 0, -1) for c in combinations(range(M), k)]
    rows = np.repeat(np.arange(n_cases), len(subsets))
    given = np.array(subsets * n_cases, bool)
    probs = rng.dirichlet(np.ones(4), len(rows))
    nan = np.where(given, np.nan, 0.0)
    out = TableOutput(probs, given, nan, nan + 0.5, nan, nan, nan, np.zeros((len(rows), M, 2)), probs[None])
    return Views(rows, given, out)


def with_scores(views: Views, good: str, noise: float, seed: int) -> Views:
    """Every rule scores at random except `good`, which scores the real change plus noise of scale `noise`."""
    rng = np.random.default_rng(seed)
    n = len(views.rows)
    actual = np.zeros((n, M))
    keep, _, act = candidates(views)
    actual[keep] = np.nan_to_num(act)
    fields = {"probability_of_change": "confidence", "expected_change": "expected_change",
              "information_gain": "info_gain", "decision_change": "decision_change"}
    for rule, name in fields.items():
        score = actual + noise * rng.normal(size=(n, M)) if rule == good else rng.random((n, M))
        score = 1 - score if rule == "probability_of_change" else score  # that rule reads 1 − confidence
        setattr(views.out, name, np.where(views.out.given, np.nan, score))
    return views


def test_candidates_are_the_views_missing_two_and_hits_pick_the_largest_real_change():
    views = synthetic_views(5, 0)
    keep, mask, actual = candidates(views)
    assert len(keep) == 5 * 3 and (views.given[keep].sum(1) == 1).all() and (mask.sum(1) == 2).all()
    score = np.where(mask, actual, np.nan)
    assert top1_hits(score, actual, mask).all() and not top1_hits(-score, actual, mask).any()
    tied = np.where(mask, 0.0, np.nan)  # e.g. no sample changes the decision for either modality
    assert (top1_hits(tied, actual, mask) == 0.5).all()  # half credit, never the first modality's luck


def test_validation_chooses_the_rule_and_test_reports_its_interval_against_chance():
    val = with_scores(synthetic_views(60, 1), "decision_change", 0.02, 2)
    test = with_scores(synthetic_views(60, 3), "decision_change", 0.02, 4)
    report = next_test_report(validation_summary(val), test)
    assert report["chosen_rule"] == "decision_change" and report["top1_chance"] == 0.5
    low, high = report["test"]["decision_change"]["interval"]
    assert 0.5 < low <= report["top1_agreement_decision_change"] <= high and report["above_chance"]
    for rule in set(NEXT_TEST_RULES) - {"decision_change"}:  # scored at random: chance inside their intervals
        lo, hi = report["test"][rule]["interval"]
        assert lo < 0.5 < hi
    json.dumps(report)  # meta.json-ready


def test_the_rule_is_chosen_on_validation_even_where_another_does_better_on_test():
    val = with_scores(synthetic_views(60, 1), "expected_change", 0.02, 2)
    test = with_scores(synthetic_views(60, 3), "information_gain", 0.02, 4)
    report = next_test_report(validation_summary(val), test)
    assert report["chosen_rule"] == "expected_change" and not report["above_chance"]
    assert report["top1_agreement_information_gain"] > report["top1_agreement_expected_change"]


def test_choice_ties_keep_the_first_rule_and_no_validation_chooses_nothing():
    assert choose_rule({r: 0.6 for r in NEXT_TEST_RULES}) == next(iter(NEXT_TEST_RULES))
    assert choose_rule({"information_gain": 0.7, "expected_change": 0.6}) == "information_gain"
    report = next_test_report({"n_views": 0}, with_scores(synthetic_views(20, 3), "expected_change", 0.02, 4))
    assert "chosen_rule" not in report and report["n_views"] == 60


def test_the_interval_resamples_cases_not_views():
    """Views of one case that agree or fail together: the case-level interval is wider than a view-level one."""
    hits = np.repeat(np.random.default_rng(0).integers(0, 2, 40), 5).astype(float)
    cases = np.repeat(np.arange(40), 5)
    by_case, by_view = grouped_interval(hits, cases), grouped_interval(hits, np.arange(len(hits)))
    assert by_case[0] <= hits.mean() <= by_case[1]
    assert by_case[1] - by_case[0] > 1.5 * (by_view[1] - by_view[0])
    assert grouped_interval(np.ones(10), np.arange(10)) == (1.0, 1.0)


def prediction(evidence: dict, **synthesized) -> Prediction:
    return Prediction("pneumonia", {"pneumonia": 0.7, "tuberculosis": 0.3}, ["note"], synthesized, "cpu", 1.0,
                      next_test_evidence=evidence)


IMAGE = {"confidence": 0.6, "expected_change": 0.1, "expected_information_gain": 0.05, "decision_change": 0.3}
LABS = {"confidence": 0.7, "expected_change": 0.2, "expected_information_gain": 0.02, "decision_change": 0.1}


def new_meta(rule: str, low: float) -> dict:
    return {"calibration": {"next_test": {"n_views": 552, "top1_chance": 0.5, "chosen_rule": rule,
                                          "above_chance": low > 0.5,
                                          "test": {rule: {"agreement": 0.61, "interval": [low, 0.66]}}}}}


def test_a_rule_that_beat_chance_names_its_first_modality_with_the_evidence():
    p = prediction(next_test_evidence(new_meta("expected_change", 0.55)), image=IMAGE, labs=LABS)
    assert p.next_test == "labs"  # the rule's first, though image has the higher chance of changing the answer
    text = p.next_test_text()
    assert text.startswith("Which test next: labs, with a 30% chance")
    assert "in 61% of 552 test views" in text and "95 % interval 55%–66%" in text and "chance 50%" in text
    # the tables list the missing modalities in the rule's order, with the rule's own score beside the chance
    p_expected = p
    assert p_expected.ranked_missing() == ["labs", "image"]
    assert p_expected.next_test_column() == ("expected change of the probabilities if acquired", {"labs": "20%", "image": "10%"})
    p = prediction(next_test_evidence(new_meta("decision_change", 0.55)), image=IMAGE, labs=LABS)
    assert p.next_test == "image" == p.ranked_missing()[0]
    p = prediction(next_test_evidence(new_meta("probability_of_change", 0.55)), image=IMAGE, labs=LABS)
    assert p.next_test_column() is None and p.ranked_missing() == ["image", "labs"]  # the chance is the score


def test_a_rule_not_shown_to_beat_chance_names_none_and_lists_each_chance():
    p = prediction(next_test_evidence(new_meta("expected_change", 0.49)), image=IMAGE, labs=LABS)
    text = p.next_test_text()
    assert p.next_test is None and "most likely" not in text
    assert "no missing modality is singled out" in text and "image 40%, labs 30%" in text
    assert "not shown to beat chance" in text and "61% of 552 test views" in text and "chance 50%" in text
    unmeasured = prediction({}, image=IMAGE, labs=LABS)  # a checkpoint whose report measured no ranking
    assert unmeasured.next_test is None and "No ranking of them has been measured" in unmeasured.next_test_text()


def test_the_shipped_checkpoints_evidence_gives_the_wording_it_earns():
    meta = json.loads((DEFAULT_CHECKPOINT / "meta.json").read_text())
    nt = meta["calibration"]["next_test"]
    evidence = next_test_evidence(meta)
    if "chosen_rule" not in nt:  # a meta from before the choice on validation (issue 28)
        assert evidence["rule"] == "probability_of_change" and not evidence["above_chance"]
    p = prediction(evidence, image=IMAGE, labs=LABS)
    text = p.next_test_text()
    if evidence["above_chance"]:  # named, with its evidence: the interval's lower bound above chance
        assert evidence["interval"][0] > evidence["chance"] and text.startswith(f"Which test next: {p.ranked_missing()[0]},")
        assert f"95 % interval {evidence['interval'][0]:.0%}–{evidence['interval'][1]:.0%}" in text
    else:
        assert "not shown to beat chance" in text and "most likely" not in text
        assert f"in {evidence['agreement']:.0%} of {nt['n_views']} test views" in text
        assert f"chance {nt['top1_chance']:.0%}" in text


def test_one_missing_modality_is_named_without_a_ranking_claim():
    p = prediction({}, labs=LABS)
    assert p.next_test == "labs" and p.next_test_text() == ("Which test next: labs, the only missing modality, with a "
                                                            "30% chance that acquiring it changes the answer.")
    assert prediction({}).next_test_text() == "" and prediction({}).next_test is None
