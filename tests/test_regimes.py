"""The missing-data regimes of issue 17: what each changes in the data, and only that."""

from __future__ import annotations

import numpy as np
import pytest

from core.evaluation.bootstrap import macro_auroc_stack
from core.evaluation.regimes import REGIMES, labelled_rows, limit_complete, mnar_missing, regime
from core.features import FeatureTable


def _table(present: np.ndarray) -> FeatureTable:
    t = FeatureTable.__new__(FeatureTable)  # only `present` matters to the regimes
    t.present = present
    return t


def test_fewer_complete_cases_only_in_the_rows_given_and_one_modality_less_each():
    rng = np.random.default_rng(0)
    present = rng.random((1000, 3)) < 0.8
    present[~present.any(1), 0] = True
    rows = np.arange(600)
    t = limit_complete(_table(present), rows, 0.05)
    assert t.present[rows].all(1).sum() == 30  # 5 % of the 600 rows
    assert np.array_equal(t.present[600:], present[600:]) and t.present is not present
    changed = np.flatnonzero((t.present != present).any(1))
    assert np.all((present[changed].sum(1) - t.present[changed].sum(1)) == 1) and t.present.any(1).all()
    assert not (t.present & ~present).any()  # nothing appears that was missing
    # asking for more than there are keeps every complete case
    assert limit_complete(_table(present), rows, 0.99).present[rows].all(1).sum() == present[rows].all(1).sum()


def test_scarce_labels_are_stratified_and_keep_every_class():
    labels = np.repeat(np.arange(5), [500, 300, 150, 30, 12])
    rows = np.arange(len(labels))
    kept = labelled_rows(labels, rows, 0.10)
    counts = np.bincount(labels[kept], minlength=5)
    assert list(counts) == [50, 30, 15, 3, 2]  # 10 % of each class, at least two of the rarest
    assert np.array_equal(kept, np.unique(kept)) and np.array_equal(kept, labelled_rows(labels, rows, 0.10))


def test_missing_not_at_random_hits_severe_and_rare_cases_at_the_same_mean_rate():
    rng = np.random.default_rng(1)
    n = 20000
    labels = rng.integers(0, 5, n)
    severity = rng.random(n)
    present = np.ones((n, 3), bool)
    drop = mnar_missing(present, labels, severity, rare=[4], rate=0.3, seed=0)
    assert (present & ~drop).any(1).all()
    assert drop.mean() == pytest.approx(0.3, abs=0.02)
    rare, common = drop[labels == 4].mean(), drop[labels != 4].mean()
    assert rare > 1.6 * common
    common_rows = labels != 4
    severe = drop[common_rows & (severity > 0.8)].mean()
    mild = drop[common_rows & (severity < 0.2)].mean()
    assert severe > 1.8 * mild


def test_unknown_regime_names_the_choices():
    with pytest.raises(ValueError, match="complete_5"):
        regime("nonsense")
    assert REGIMES["labels_10"].label_share == 0.1 and REGIMES["redundant"].cohort == "redundant"
    from core.evaluation.evaluate import evaluate

    with pytest.raises(ValueError, match="own cohort variant"):  # not silently evaluated on other data
        evaluate(data="elsewhere", regime_name="redundant", progress=False)


def test_scarce_labels_never_read_the_hidden_labels(small_cohort):
    """Training with 10 % of the labels gives the same model whatever the other training cases' labels are:
    only the denoiser reads those cases, and it reads no labels."""
    import torch

    from core.data.dataset import Dataset
    from core.features import dataset_features
    from core.model.config import Config, quick
    from core.paths import CONFIGS
    from core.training import train_model

    config = quick(Config.load(CONFIGS / "default.yaml")).override(
        "training", epochs=2, diffusion_epochs=2, finetune_epochs=1).override("diffusion", samples=4)
    ds = Dataset.open(small_cohort)
    table = dataset_features(ds, config.model, "cpu", progress=False)
    tr = ds.indices("train")
    labelled = labelled_rows(ds.labels, tr, 0.10)
    hidden = np.setdiff1d(tr, labelled)
    first = train_model(ds, table, config, "cpu", progress=False, labelled=labelled)
    ds.labels[hidden] = np.random.default_rng(0).permutation(ds.labels[hidden])
    ds.labels[hidden[:5]] = (ds.labels[hidden[:5]] + 1) % len(ds.classes)  # certainly different
    second = train_model(ds, table, config, "cpu", progress=False, labelled=labelled)
    a, b = first.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and the labelled rows do matter: with every label, the classifier differs
    full = train_model(ds, table, config, "cpu", progress=False)
    assert not torch.equal(full.model.head[-1].weight, first.model.head[-1].weight)
    with pytest.raises(ValueError, match="training split"):  # a validation or test case is never a training label
        train_model(ds, table, config, "cpu", progress=False, labelled=np.append(labelled, ds.indices("val")[:1]))


def test_bootstraps_stack_patterns_and_seeds_and_report_both_aurocs():
    from core.evaluation.report import pattern_columns
    from core.evaluation.verdicts import bootstraps

    rng = np.random.default_rng(3)
    names = ["image", "note"]
    n, c = 120, 3
    labels = rng.integers(0, c, 200)
    complete, everyone = np.arange(n), np.arange(200)
    where = {p: complete for p in pattern_columns(names)} | {"random_50": complete, "natural": everyone}
    onehot = np.eye(c)

    def probs(strength: float, seed: int) -> dict[str, np.ndarray]:
        r = np.random.default_rng(seed)
        return {k: (strength * onehot[labels[idx]] + r.random((len(idx), c))).astype(np.float32)
                for k, idx in where.items()}

    kept = {(m, s): probs(strength, 10 * s + i) for s in (0, 1)
            for i, (m, strength) in enumerate([("robustmdiff", 1.0), ("weak", 0.2), ("same", 1.0)])}
    out = bootstraps(kept, where, labels, [0, 1], names, n_resamples=300)
    assert set(out) == {"patterns", "random_50", "natural"}  # no MNAR conditions here: no MNAR comparison
    rows = {r["method"]: r for r in out["patterns"]}
    assert rows["weak"]["direction"] == "better" and rows["same"]["direction"] == "no clear difference"
    assert rows["weak"]["n_conditions"] == 3 and rows["weak"]["n_seeds"] == 2  # 3 patterns, 2 seeds resampled
    assert rows["weak"]["seeds_resampled"]
    y = labels[complete]
    stack = np.stack([kept[("weak", s)][p] for s in (0, 1) for p in pattern_columns(names)])
    assert rows["weak"]["auroc"] == pytest.approx(macro_auroc_stack(y, stack).mean())
    assert rows["weak"]["auroc_reference"] - rows["weak"]["auroc"] == pytest.approx(rows["weak"]["difference"])


def test_the_study_reads_each_regime_by_its_own_comparison(tmp_path):
    """MNAR is read on its MNAR conditions of the natural run, the others on the pattern average; the table
    and the figure carry every regime's interval."""
    from core.evaluation.regime_study import figure, frame, markdown, parse_regimes, summary_rows

    def boot(shift: float) -> list[dict]:
        return [{"method": "no_diffusion", "difference": shift, "low": shift - 0.01, "high": shift + 0.01, "p": 0.01,
                 "p_holm": 0.02, "direction": "better" if shift > 0 else "worse", "auroc": 0.8, "auroc_reference": 0.8 + shift}]

    results = {"natural": {"bootstraps": {"patterns": boot(0.01), "mnar_50": boot(-0.02)}},
               "complete_5": {"bootstraps": {"patterns": boot(0.03)}}}
    rows = summary_rows(["natural", "mnar", "complete_5"], results)
    assert [(r["regime"], r["comparison"], r["difference"]) for r in rows] == [
        ("natural", "patterns", 0.01), ("mnar", "mnar_50", -0.02), ("complete_5", "patterns", 0.03)]
    table = frame(rows)
    assert list(table["reading"]) == ["RobustMDiff better", "RobustMDiff worse", "RobustMDiff better"]
    assert list(table["95 % interval"]) == ["[+0.00, +2.00]", "[-3.00, -1.00]", "[+2.00, +4.00]"]
    text = markdown({"summary": rows, "train": {"complete_5": {"complete": 90, "labelled": 2100, "data": "d"}}})
    assert "5 % complete training cases: 90 complete training cases, 2100 labelled (data/d)" in text
    fig = figure(rows)
    (trace,) = fig.data
    assert list(trace.y) == pytest.approx([1.0, 3.0, -2.0])  # regimes in REGIMES order: natural, complete_5, mnar
    assert list(trace.error_y.array) == pytest.approx([1.0, 1.0, 1.0])
    assert list(fig.layout.xaxis.ticktext) == ["as it comes", "5 % complete", "not at random"]
    assert parse_regimes("all")[0] == "natural"
    with pytest.raises(ValueError, match="unknown regimes"):
        parse_regimes("natural,often")


def test_tuning_reads_validation_only_and_keeps_the_best_value(small_cohort, tmp_path):
    """Each value is scored on validation; changing every test label changes nothing; the written
    configuration holds the chosen values and loads."""
    from core.data.dataset import Dataset
    from core.evaluation.tuning import markdown, parse_grid, tune, write
    from core.model.config import Config, quick
    from core.paths import CONFIGS

    base = quick(Config.load(CONFIGS / "default.yaml")).override(
        "training", epochs=2, diffusion_epochs=2, finetune_epochs=1).override("diffusion", samples=4)
    grid = parse_grid(["rare_gamma=0,1", "denoiser_width=64"], base)
    assert grid == {"rare_gamma": [0.0, 1.0], "denoiser_width": [64]}
    with pytest.raises(ValueError, match="unknown parameter"):
        parse_grid(["gamma=1"], base)
    ds = Dataset.open(small_cohort)
    first = tune(ds, base, grid)
    te = ds.indices("test")
    ds.labels[te] = (ds.labels[te] + 1) % len(ds.classes)
    again = tune(ds, base, {"rare_gamma": grid["rare_gamma"]})  # one parameter: its best run is the combination
    gammas = [r for r in first["rows"] if r["parameter"] == "rare_gamma"]
    assert [r["val_score"] for r in gammas] == [r["val_score"] for r in again["rows"]]
    assert again["combined_val_score"] == max(r["val_score"] for r in again["rows"]) and again["combined_seconds"] < 1
    assert first["chosen"]["rare_gamma"] == max(gammas, key=lambda r: r["val_score"])["value"]
    tuned = Config.load(write(first, tmp_path))
    assert tuned.training.rare_gamma == first["chosen"]["rare_gamma"] and tuned.diffusion.denoiser_width == 64
    assert "all chosen together" in markdown(first) and "**chosen**" in markdown(first)


def test_a_study_of_an_earlier_cohort_or_model_says_so():
    """The lab reads a regime study against the shipped checkpoint: another cohort version, another model or
    diffusion configuration, or a file that records neither (before issue 28) is an earlier study, said so."""
    from core.evaluation.describe import study_provenance

    config = {"model": {"hidden": 128}, "diffusion": {"samples": 40, "sample_steps": 3}, "training": {"epochs": 40}}
    meta = {"data_fingerprint": "abcdef0123", "config": config}
    study = {"created": "2026-12-08 01:00 UTC", "commit": "1234567", "data_fingerprint": "abcdef0123",
             "run_config": {**config, "training": {"epochs": 6}}}  # the short schedule: the same model
    which, current = study_provenance(study, meta)
    assert current and "made 2026-12-08 01:00 UTC, code 1234567" in which
    for earlier in ({**study, "data_fingerprint": "99999999aa"},
                    {**study, "run_config": {**config, "diffusion": {"samples": 8, "sample_steps": 10}}},
                    {"regimes": ["natural"], "summary": []}):
        which, current = study_provenance(earlier, meta)
        assert not current and which.startswith("An earlier study") and "abcdef01…" in which
    assert "date not recorded" in which and "an earlier version of the cohort" in which
