"""Evaluation: availability patterns, metrics against scikit-learn, and a quick run end to end."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from core.evaluation import describe
from core.evaluation.evaluate import evaluate
from core.evaluation.metrics import classification_metrics, expected_calibration_error, macro_auroc
from core.evaluation.patterns import availability_patterns, pattern_name, random_missing
from core.evaluation.report import pattern_columns, significance
from core.model.config import Config
from core.paths import CONFIGS


def test_every_non_empty_subset_once():
    for m in range(1, 6):
        pats = availability_patterns(m)
        assert len(pats) == 2 ** m - 1 == len(set(pats))
        assert all(any(p) for p in pats) and pats[0] == (True,) * m
    names = ["image", "note", "labs"]
    assert pattern_columns(names) == ["image", "note", "labs", "image+note", "image+labs", "note+labs", "image+note+labs"]
    assert pattern_name((True, False, True), names) == "image+labs"


def test_random_missingness_rate_and_at_least_one_kept():
    present = np.ones((20000, 3), bool)
    drop = random_missing(present, 0.5, seed=0)
    assert (present & ~drop).any(1).all()
    assert 0.4 < drop.mean() < 0.5  # 0.5 minus the restored ones


def test_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    logits = rng.normal(size=(400, 4)) + 1.5 * np.eye(4)[y]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = classification_metrics(y, proba)
    pred = proba.argmax(1)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["precision"] == pytest.approx(precision_score(y, pred, average="macro"))
    assert m["recall"] == pytest.approx(recall_score(y, pred, average="macro")) == m["sensitivity"]
    spec = np.mean([((pred != c) & (y != c)).sum() / (y != c).sum() for c in range(4)])
    assert m["specificity"] == pytest.approx(spec)
    rare = classification_metrics(y, proba, classes=[3])
    assert rare["auroc"] == pytest.approx(roc_auc_score(y == 3, proba[:, 3]))
    assert rare["recall"] == pytest.approx(((pred == 3) & (y == 3)).sum() / (y == 3).sum())
    # a class without positives is left out rather than breaking the macro average
    assert macro_auroc(y[y != 2], proba[y != 2]) == pytest.approx(
        np.mean([roc_auc_score(y[y != 2] == c, proba[y != 2][:, c]) for c in (0, 1, 3)]))


def test_ece_of_perfectly_calibrated_and_overconfident():
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.5, 1.0, 100000)
    correct = rng.random(100000) < conf
    proba = np.stack([conf, 1 - conf], 1)
    y = np.where(correct, 0, 1)
    assert expected_calibration_error(y, proba) < 0.01
    assert expected_calibration_error(np.ones_like(y), proba) > 0.5


def test_wilcoxon_detects_a_consistent_gap():
    rows = []
    for seed in range(3):
        for k, cond in enumerate(["a", "b", "a+b"]):
            rows.append({"method": "robustmdiff", "seed": seed, "condition": cond, "group": "all", "auroc": 0.9 + 0.01 * k})
            rows.append({"method": "worse", "seed": seed, "condition": cond, "group": "all", "auroc": 0.8 + 0.01 * k - 0.001 * seed})
            rows.append({"method": "same", "seed": seed, "condition": cond, "group": "all", "auroc": 0.9 + 0.01 * k})
    sig = significance(rows, ["a", "b"])
    assert sig["worse"]["p_value"] < 0.05 and sig["worse"]["wins"] == 9
    assert sig["same"]["p_value"] == 1.0


def test_run_time_says_how_much_of_a_resumed_run_it_covers():
    """A run resumed across sessions took far longer than its last part: the pages say what `seconds` covers."""
    base = {"seconds": 5400, "machine": {"cpus": 2}, "device": "cpu"}
    assert describe.run_time(base) == "90 min on 2 CPUs (cpu)"  # a file from before `reused` was recorded
    assert describe.run_time({**base, "models": 48, "reused": 0}) == "90 min on 2 CPUs (cpu)"
    assert describe.run_time({**base, "models": 48, "reused": 22}) == (
        "90 min on 2 CPUs (cpu) for 26 of 48 models (the rest saved by earlier runs of the same command)")
    assert describe.run_time({**base, "seconds": 40, "models": 48, "reused": 48}) == (
        "every model saved by earlier runs of the same command (resumed), on 2 CPUs (cpu); the tables and "
        "bootstraps 40 s")


def test_quick_evaluation_end_to_end(small_cohort, tmp_path, tmp_path_factory):
    """The quick schedule on the small cohort (the 600-case quick cohort changes nothing that is tested here)."""
    # under the configuration's class weights (rare classes weighted like the others) 'w/o rare-disease sampling'
    # would be RobustMDiff itself: named, not trained
    # the configuration with `train --quick`'s 8 diffusion samples: the scoring under every condition costs K
    config = tmp_path_factory.mktemp("config") / "k8.yaml"
    config.write_text(yaml.safe_dump(Config.load(CONFIGS / "default.yaml").override("diffusion", samples=8).to_dict()))
    evaluate(data=small_cohort, methods="early_zero,late_fusion,no_rare_sampling", quick=True, out=tmp_path,
             progress=False, config_path=config)
    for f in ("results.json", "results.csv", "table.md", "auroc_by_pattern.html", "retention.html", "reliability.html"):
        assert (tmp_path / f).exists(), f
    df = pd.read_csv(tmp_path / "results.csv")
    assert set(df.method) == {"early_zero", "late_fusion", "robustmdiff"}
    conditions = set(df.condition)
    assert {"image", "note", "labs", "image+note+labs", "random_30", "random_50", "natural"} <= conditions
    assert set(df.group) == {"all", "rare", "common"}
    table = (tmp_path / "table.md").read_text()
    assert "AVG AUROC" in table and "RobustMDiff" in table and "Wilcoxon" in table
    main = table.split("## Retention")[0]
    assert main.count("**") >= 2 * 16  # the best of each of the 7 × 2 + 2 columns in bold
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["same_as_robustmdiff"] == {"no_rare_sampling": "w/o rare-disease sampling"}
    assert "w/o rare-disease sampling: not trained" in table
    assert set(saved["significance"]) == {"early_zero", "late_fusion"}
    assert all(0 <= r["auroc"] <= 1 for r in saved["rows"] if r["auroc"] is not None)  # null: one class only
    assert set(saved["bootstraps"]) == {"patterns", "random_50", "mnar_50", "natural"}
    for rows in saved["bootstraps"].values():  # Holm, a direction each; one seed: over test cases only, and said so
        boot = {r["method"]: r for r in rows}
        assert set(boot) == {"early_zero", "late_fusion"} and "paired bootstrap over test cases only" in table
        assert all(r["low"] <= r["difference"] <= r["high"] and r["p_holm"] >= r["p"] for r in boot.values())
        assert not any(r["seeds_resampled"] for r in rows)
    assert "One seed per method: the interval covers test cases only" in table and saved["recipe"] == 2
    assert set(saved["rare_intervals"]) == {"early_zero", "late_fusion", "robustmdiff"}  # rare classes, with intervals
    assert "rare recall 95 % interval" in table and "optimistic" in table
    assert saved["bootstrap_natural"] == saved["bootstraps"]["natural"]
    kept = np.load(tmp_path / "probabilities.npz")  # every condition's per-case probabilities, for later comparisons
    assert {"robustmdiff|0|natural", "early_zero|0|mnar_50", "rows|image", "y|natural"} <= set(kept.files)
    image_only = kept["robustmdiff|0|image"]
    assert image_only.shape[0] == saved["n_test_complete"] == len(kept["rows|image"])
    assert np.allclose(image_only.sum(1), 1, atol=1e-4)

    # An interrupted run resumes: every finished model is saved, and a rerun into the same folder reuses them
    # (here with two worker processes for the two models that are missing or unreadable).
    parts = tmp_path / "parts"
    assert sorted(p.name for p in parts.iterdir()) == [f"{m}-seed0.{ext}" for m in ("early_zero", "late_fusion",
                                                       "robustmdiff") for ext in ("json", "npz")]
    kept = (parts / "robustmdiff-seed0.json").stat().st_mtime_ns
    (parts / "late_fusion-seed0.json").unlink()
    (parts / "early_zero-seed0.json").write_text('{"stamp": {"da')  # cut short, as by an interrupt: trained again
    again = evaluate(data=small_cohort, methods="early_zero,late_fusion", quick=True, out=tmp_path, progress=False,
                     jobs=2, config_path=config)
    assert (parts / "robustmdiff-seed0.json").stat().st_mtime_ns == kept
    assert (saved["models"], saved["reused"], again["models"], again["reused"]) == (3, 0, 3, 1)
    assert "for 2 of 3 models (the rest saved by earlier runs" in describe.run_time(again)
    assert (parts / "late_fusion-seed0.json").exists() and (parts / "early_zero-seed0.json").exists()
    pd.testing.assert_frame_equal(pd.DataFrame(again["rows"]), pd.DataFrame(saved["rows"]), atol=1e-6)


def test_the_design_targets_as_written_against_the_best_comparison_method():
    """The design's robustness target (50 % missing) and its rare-disease target, measured against the best
    of the seeds' baselines on each measure, from the shipped evaluation's rows."""
    import json

    from core.evaluation import report
    from core.evaluation.methods import methods_for
    from core.paths import ASSETS

    path = ASSETS / "evaluation" / "results.json"
    if not path.exists():
        pytest.skip("no shipped evaluation")
    res = json.loads(path.read_text())
    found = {t["target"]: t for t in report.targets(res["rows"], res["modalities"])}
    kept = report.retention(res["rows"], res["modalities"]).set_index("method").loc["robustmdiff", "random_50"]
    design = found["design: >= 85–90 % of full performance with up to 50 % of modalities missing"]
    assert design["met"] == (kept >= 0.85) and f"{kept:.1%}" in design["measured"]
    s = report.summary(res["rows"])
    rare = s[(s.condition == "natural") & (s.group == "rare")].set_index("method")
    baselines = [m.name for m in methods_for([]) if m.kind == "baseline" and m.name in rare.index]
    for measure in ("accuracy", "recall"):
        t = found[f"design: rare-disease {measure} >= 15–20 % above the best comparison method"]
        ours, best = rare.loc["robustmdiff", measure], rare.loc[baselines, measure].max()
        assert f"{ours:.3f} vs {best:.3f}" in t["measured"] and t["met"] == (ours / best - 1 >= 0.15)


# ---- statistics a reader can trust (issue 29 item 6) -----------------------------------------------------------
def test_one_verdict_rule_the_adjusted_interval_excludes_zero_exactly_where_the_reading_says_so():
    """Every bootstrap table reads 'better'/'worse' from the Holm-adjusted p, and the interval shown beside it is
    adjusted alike: it excludes zero exactly there (the shipped table once showed +2.09 [+0.53, +3.73] beside
    'no clear difference'). Fresh rows and the shipped file (an approximation for rows saved before) alike."""
    from core.evaluation import bootstrap, verdicts
    from core.paths import ASSETS

    rng = np.random.default_rng(3)
    n, classes = 160, 4
    y = rng.integers(0, classes, n)

    def method(noise: float) -> np.ndarray:
        logits = np.eye(classes)[y][None] * 2 + rng.normal(0, noise, (2, n, classes))
        return np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)

    ours = method(1.6)
    probs = {"robustmdiff": ours, **{f"m{i}": method(noise) for i, noise in enumerate((1.7, 1.8, 1.9, 2.0, 2.3, 3.5))}}
    rows = bootstrap.compare(y, probs, "robustmdiff", n_resamples=400)
    tables = [rows]
    shipped = ASSETS / "evaluation" / "results.json"
    if shipped.exists():
        saved = json.loads(shipped.read_text())
        tables += list((saved.get("bootstraps") or {"natural": saved["bootstrap_natural"]}).values())
    readings = set()
    for table in tables:
        frame = verdicts.bootstrap_frame(table)
        assert list(frame.columns) == ["method", "difference (AUROC points)", "interval (Holm)", "p (Holm)", "reading"]
        for _, r in frame.iterrows():
            low, high = (float(v) for v in r["interval (Holm)"].lstrip("≈").strip("[]").split(", "))
            assert (low > 0 or high < 0) == (r.reading != "no clear difference"), r.to_dict()
            readings.add(r.reading)
    assert {"RobustMDiff better", "no clear difference"} <= readings  # both sides of the rule were exercised
    for r in rows:  # the adjusted interval is the 95 % one widened, never narrowed
        assert r["low_holm"] <= r["low"] + 1e-12 and r["high_holm"] >= r["high"] - 1e-12
        assert 0.95 <= r["confidence_holm"] < 1


def test_wilcoxon_tables_show_holm_p_without_a_verdict_of_their_own():
    """The comparison table's stars and the targets count only Holm-adjusted p < 0.05, as the bootstrap tables
    do (the shipped 'w/o rare-disease sampling' had p 0.026* in one table and 'no clear difference' in the next)."""
    from core.evaluation import report

    rows = []
    for seed in range(3):
        for k, cond in enumerate(["a", "b", "a+b"]):
            for m, gap in (("robustmdiff", 0), ("far", 0.1), ("near", 0.004), ("same", 0)):
                jitter = 0.001 * seed * (m == "near") * (-1) ** k
                rows.append({"method": m, "seed": seed, "condition": cond, "group": "all", "accuracy": 0.5,
                             "auroc": 0.9 + 0.01 * k - gap + jitter})
    sig = report.significance(rows, ["a", "b"])
    assert all(v["p_holm"] >= v["p_value"] for v in sig.values())
    table, helps = report.comparison(rows, ["a", "b"])
    shown = dict(zip(table.Method, table["p (Holm)"]))
    assert "*" not in "".join(shown.values()) and min(v["p_holm"] for v in sig.values()) < 0.05  # a p that once got a *
    assert all(shown[report.display_name(m)] == report._p_text(v["p_holm"]) for m, v in sig.items())
    assert "Holm" in helps["p (Holm)"] and "bootstrap" in helps["p (Holm)"]  # the verdict: one test, elsewhere
    assert "optimistic" in helps["p (Holm)"].lower() and "not a verdict" in helps["p (Holm)"]
    main = report.main_table(rows, ["a", "b"])
    assert "*" not in "".join(line.split("|")[1] for line in main.splitlines()[2:])


def test_no_percentage_change_from_zero():
    """A quick run whose models never name a rare class read '0.000 vs 0.000 … −100.0 %'."""
    from core.evaluation import report

    assert report.relative_change(0.0, 0.0) == "+0.000 absolute; no % change from zero"
    assert report.relative_change(0.2, 0.0).startswith("+0.200 absolute")
    assert report.relative_change(0.55, 0.5) == "+10.0%"
    assert not report.gain_met(0.0, 0.0, 0.15) and report.gain_met(0.1, 0.0, 0.15)
    assert report.gain_met(0.6, 0.5, 0.15) and not report.gain_met(0.55, 0.5, 0.15)
    rows = []
    for m in ("robustmdiff", "early_zero", "no_rare_sampling"):
        for c in ["image", "random_30", "random_50", "natural"]:
            for g in ("all", "rare", "common"):
                rows.append({"method": m, "seed": 0, "condition": c, "group": g, "auroc": 0.8, "accuracy": 0.0,
                             "recall": 0.0})
    measured = " ".join(t["measured"] for t in report._rare_against_comparisons(report.summary(rows)))
    measured += " ".join(t["measured"] for t in report.targets(rows, ["image"]) if "rare" in t["target"])
    assert "%" not in measured.replace("no % change", "") and "-100.0" not in measured


def test_a_quick_evaluation_process_does_not_outlive_its_server(tmp_path, monkeypatch):
    """Issue 29 item 10: the server's exit handler stops a running quick evaluation, and an evaluation whose
    starting process is gone (killed without exit handlers) stops at its next progress news."""
    import subprocess
    import sys

    from core.evaluation import evaluate as module

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (tmp_path / "run").mkdir()
    monkeypatch.setattr(module, "_JOB", module.QuickJob(tmp_path / "run", ["early_zero"], sleeper))
    module._stop_quick()  # what atexit runs when the server exits
    assert sleeper.poll() is not None and module.current_quick().error().startswith("The quick evaluation did not")
    assert not (tmp_path / "run").exists()  # its temporary folder goes with it

    monkeypatch.setenv(module.PARENT_ENV, str(os.getppid()))
    heard = []
    news = module.logged(tmp_path, lambda f, text: heard.append(text))
    news(0.0, "starting")  # the parent is there: the news is logged and passed on
    assert heard == ["starting"] and module.last_news(tmp_path)["text"] == "starting"
    monkeypatch.setenv(module.PARENT_ENV, str(os.getppid() + 100000))  # a parent that is gone
    with pytest.raises(SystemExit, match="is gone"):
        module.logged(tmp_path, lambda f, text: None)(0.5, "training")
