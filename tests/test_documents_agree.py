"""Issue 29 item 7: the README's figures are the shipped result files' (checkpoints/default/meta.json,
configs/default.yaml, the comparison checkpoints, assets/evaluation/results.json). Each figure the README
quotes is parsed from its text and recomputed from the file it comes from, so that a retrained checkpoint or
an edited sentence that drifts fails here. No model is loaded."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from core.evaluation import describe, report
from core.paths import ASSETS, CONFIGS, DEFAULT_CHECKPOINT, ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
BENCHMARKS = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
META = json.loads((DEFAULT_CHECKPOINT / "meta.json").read_text(encoding="utf-8"))
CONFIG = yaml.safe_load((CONFIGS / "default.yaml").read_text(encoding="utf-8"))
NUMBER = r"(\d+(?:\.\d+)?)"


def quoted(pattern: str, text: str = README) -> tuple[str, ...]:
    """The groups of the one place `pattern` (whitespace-tolerant: the README wraps lines) matches."""
    found = re.findall(pattern.replace(" ", r"\s+"), text)
    assert len(found) == 1, f"{pattern!r} found {len(found)} times in the document"
    return found[0] if isinstance(found[0], tuple) else (found[0],)


def test_sampler_steps_and_samples():
    steps, samples = quoted(r"DDIM with (\d+) steps; K = (\d+) samples")
    for config in (CONFIG, META["config"]):
        assert (int(steps), int(samples)) == (config["diffusion"]["sample_steps"], config["diffusion"]["samples"])
    # the Model card writes the same words from the checkpoint's config
    assert describe.sampler(META["config"]) == f"{steps} DDIM steps × {samples} samples"


def test_training_time():
    seconds, minutes = quoted(r"\((\d+) s, about (\d+) minutes, of training")
    assert int(seconds) == round(META["train_seconds"]) and int(minutes) == round(META["train_seconds"] / 60)
    assert f"{round(META['train_seconds'])} s of training" in BENCHMARKS


def test_headline_test_auroc_per_availability():
    all_, one, one_missing, two, two_left, natural, average = quoted(
        rf"natural \| {NUMBER} / {NUMBER} \((\w+) missing\) / {NUMBER} \((\w+) only\) / {NUMBER}; average over the 7 "
        rf"patterns {NUMBER}")
    auroc = {k: 100 * v["auroc"] for k, v in META["test_metrics"].items()}
    names = [m["name"] for m in META["spec"]["modalities"]]
    pairs = {n: "+".join(m for m in names if m != n) for n in names}  # the pattern with one modality missing
    worst_missing = min(pairs, key=lambda n: auroc[pairs[n]])
    worst_single = min(names, key=lambda n: auroc[n])
    assert float(all_) == round(auroc["+".join(names)], 1) and float(natural) == round(auroc["natural"], 1)
    assert (float(one), one_missing) == (round(auroc[pairs[worst_missing]], 1), worst_missing)
    assert (float(two), two_left) == (round(auroc[worst_single], 1), worst_single)
    patterns = [k for k in auroc if k not in ("natural",) and not k.startswith("random")]
    assert len(patterns) == 7 and float(average) == round(sum(auroc[p] for p in patterns) / 7, 1)


def test_calibration_figures():
    cal = META["calibration"]
    order = ["image", "note", "labs"]
    found = quoted(rf"ECE {NUMBER} / {NUMBER} / {NUMBER} and AUROC {NUMBER} / {NUMBER} / {NUMBER} for image / note / "
                   r"labs hidden")
    assert list(found[:3]) == [f"{cal['confidence'][m]['ece']:.3f}" for m in order]
    assert list(found[3:]) == [f"{cal['confidence'][m]['auroc']:.2f}" for m in order]
    seed = quoted(rf"seed sensitivity {NUMBER} / {NUMBER} / {NUMBER} \(target ≤ 0.03\)")
    assert list(seed) == [f"{cal['seed_sensitivity'][m]:.3f}" for m in order]
    p = cal["probabilities"]
    ece, low, high, n, gap = quoted(rf"ECE {NUMBER} \(target 0.03; a perfectly calibrated model would show {NUMBER}–"
                                    rf"{NUMBER} on these (\d+) cases\); every class's mean probability within {NUMBER}")
    assert (ece, low, high, int(n), gap) == (f"{p['ece']:.3f}", f"{p['ece_noise_floor'][0]:.3f}",
                                             f"{p['ece_noise_floor'][1]:.3f}", cal["n_test"], f"{p['prevalence_gap']:.3f}")
    (coverage,) = quoted(r"80 % intervals cover (\d+) % of the real test values")
    assert int(coverage) == round(100 * cal["assumed_values"]["labs"]["coverage"])


def test_guard_false_alarms():
    found = quoted(rf"false alarms on the test split {NUMBER} % / {NUMBER} % / {NUMBER} % \(image / note / labs")
    flagged = META["guard"]["test_flagged"]
    assert list(found) == [f"{100 * flagged[m]:.1f}" for m in ("image", "note", "labs")]


def test_review_comparison_models():
    dropout, late, ours = quoted(rf"natural missingness {NUMBER} for dropout, {NUMBER} for late fusion, against "
                                 rf"{NUMBER} for RobustMDiff")
    folder = DEFAULT_CHECKPOINT.parent / "comparison"
    for quoted_value, meta in ((dropout, folder / "dropout_0.5"), (late, folder / "late_fusion")):
        if not (meta / "meta.json").exists():
            pytest.skip(f"{meta} is not shipped")
        natural = json.loads((meta / "meta.json").read_text())["test_metrics"]["natural"]["auroc"]
        assert quoted_value == f"{natural:.3f}"
    assert ours == f"{META['test_metrics']['natural']['auroc']:.3f}"


def test_the_earlier_comparison_is_quoted_with_its_own_model_and_date():
    """The 16-method comparison was made on an earlier checkpoint: the README says which (date, data, sampler),
    and its figures are that file's."""
    path = ASSETS / "evaluation" / "results.json"
    if not path.exists():
        pytest.skip("no shipped evaluation")
    result = json.loads(path.read_text())
    date, data, sampler = quoted(r"an earlier model of (\d{4}-\d{2}-\d{2}), data `(\w+)…`, sampler ([^,]+ samples)")
    assert result["data_fingerprint"].startswith(data) and sampler == describe.sampler(result["config"])
    assert result.get("created", date).startswith(date)
    assert result["data_fingerprint"] != META["data_fingerprint"]  # so it must carry that label
    ours, ours_sd, best, best_sd = quoted(rf"RobustMDiff {NUMBER} ± {NUMBER}; best baseline \(modality dropout p = "
                                          rf"0.5\) {NUMBER} ± {NUMBER}")
    avg = report.averages(result["rows"], result["modalities"]).groupby("method")["auroc"].agg(["mean", "std"])
    for method, mean, sd in (("robustmdiff", ours, ours_sd), ("dropout_0.5", best, best_sd)):
        assert (mean, sd) == (f"{100 * avg.at[method, 'mean']:.1f}", f"{100 * avg.at[method, 'std']:.1f}")


def test_benchmarks_table_of_the_shipped_checkpoint():
    """BENCHMARKS.md's table of the shipped checkpoint (its newest retraining, issue 28) is its meta.json."""
    section = BENCHMARKS.split("### The shipped checkpoint, retrained on the design chosen on validation", 1)[1]
    section = section.split("Average over the 7 patterns", 1)[0]
    rows = re.findall(rf"^\| ([a-z +]+?)(?: alone)?(?: \([^)]*\))? \| {NUMBER} \| {NUMBER} \| {NUMBER} \|$", section,
                      re.M)
    assert len(rows) == 8, rows
    for label, auroc, accuracy, ece in rows:
        m = META["test_metrics"]["natural" if label == "natural missingness" else label.replace(" + ", "+")]
        assert (auroc, accuracy, ece) == (f"{m['auroc']:.3f}", f"{m['accuracy']:.3f}", f"{m['ece']:.3f}"), label
