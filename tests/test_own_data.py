"""Bring-your-own data on small real-shaped sets: a one-modality report set with unreadable rows (quarantined,
reported, `--strict` aborts naming the row), three inline tabular groups from a real clinical table
(scikit-learn's breast cancer set) that train, score and predict by modality name, and `validate`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from core.paths import ROOT

FINDINGS = {"abnormal": ["Patchy consolidation in the right lower lobe.", "Moderate left pleural effusion.",
                         "Enlarged cardiac silhouette with interstitial oedema.", "Right apical pneumothorax.",
                         "Nodular opacity in the left upper lobe."],
            "normal": ["The lungs are clear.", "No focal consolidation, effusion or pneumothorax.",
                       "Heart size is normal.", "Normal mediastinal contours.", "No acute cardiopulmonary process."]}


def _cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> Path:
    """160 short radiology reports labelled normal/abnormal, one modality; three notes are unreadable."""
    root = tmp_path_factory.mktemp("reports")
    (root / "notes").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(160):
        label = "abnormal" if i % 2 else "normal"
        text = "FINDINGS: " + " ".join(rng.choice(FINDINGS[label], 2, replace=False)) + " Indication: cough."
        if i in (7, 42, 99):
            text = "   \n 2019 \n"  # no words: unreadable
        (root / "notes" / f"{i}.txt").write_text(text)
        rows.append({"case_id": f"r{i}", "label": label, "note_path": f"notes/{i}.txt"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    (root / "spec.yaml").write_text(yaml.safe_dump({
        "name": "reports", "label": "label", "case_id": "case_id", "classes": ["normal", "abnormal"],
        "modalities": [{"name": "report", "type": "text", "column": "note_path"}]}))
    return root


def test_validate_names_unreadable_rows_and_exits_1(reports):
    r = _cli("validate", "--data", str(reports), "--json")
    assert r.returncode == 1, r.stderr
    out = json.loads(r.stdout)
    assert out["unreadable"] == 3 and any("manifest row 8 (case r7), report" in p for p in out["problems"])
    assert out["modalities"][0]["readable"] == 157


def test_one_modality_spec_trains_with_a_data_report_and_scores(reports, tmp_path):
    strict = _cli("train", "--quick", "--data", str(reports), "--out", str(tmp_path / "strict"), "--strict")
    assert strict.returncode == 2 and "manifest row 8 (case r7), report" in strict.stderr, strict.stderr[-2000:]
    done = _cli("train", "--quick", "--data", str(reports), "--out", str(tmp_path / "ckpt"))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "ckpt" / "data_report.json").read_text())
    assert report["unreadable_inputs"] == 3 and report["cases_dropped"] == 3
    assert [e["row"] for e in report["examples"]] == [8, 43, 100] and "contains no words" in report["examples"][0]["reason"]
    assert "3 unreadable input(s)" in done.stderr
    # these reports are easy: validation AUROC saturates, so the loss decides and the first epoch is not kept
    assert json.loads((tmp_path / "ckpt" / "meta.json").read_text())["best_epoch"] > 0
    scored = _cli("score", "--checkpoint", str(tmp_path / "ckpt"), "--data", str(reports), "--json")
    assert scored.returncode == 0, scored.stderr[-2000:]
    rows = {r["condition"]: r for r in json.loads(scored.stdout)["rows"] if r["group"] == "all"}
    assert set(rows) >= {"report", "natural"} and rows["natural"]["auroc"] > 0.9


def test_early_stopping_breaks_auroc_ties_by_validation_loss():
    import torch

    from core.early_stopping import AUROC_TIE, Best

    best = Best(torch.nn.Linear(1, 1), patience=3)
    for epoch, (auroc, loss) in enumerate([(1.0, 0.50), (1.0, 0.30), (1.0 - AUROC_TIE / 2, 0.20), (0.95, 0.10)]):
        best.update(auroc, epoch, loss)
    assert best.epoch == 2  # a clear AUROC loss (epoch 3) is not traded for a lower loss
    assert not best.update(0.9, 4, 1.0) and best.waited == 2
    assert best.update(0.9, 5, 1.0)  # patience (3) runs out


@pytest.fixture(scope="module")
def tabular_groups(tmp_path_factory) -> Path:
    """scikit-learn's breast cancer data (569 real cases) as three inline tabular groups (two with `features:`), the
    spec named breast_cancer.yaml (not a name searched: `--spec` names it), and one more lab of the first group,
    `ki67`, measured only outside the training split (an empty column there, as a lab a site never ordered)."""
    from core.data.dataset import stable_split
    from own_models import breast_cancer_frame

    df, cols = breast_cancer_frame()
    training = stable_split(df["case_id"], df["label"]) == "train"  # the split Dataset makes without a split column
    df["ki67"] = np.where(training, np.nan, np.random.default_rng(0).uniform(1, 40, len(df)).round(1))
    root = tmp_path_factory.mktemp("tabular")
    df.to_csv(root / "manifest.csv", index=False)
    groups = {"mean": cols[:10] + ["ki67"], "error": cols[10:20], "worst": cols[20:]}
    labs = [{"name": c, "label": c.replace("_", " "), "unit": "", "plausible": [0, 1e5]} for c in cols + ["ki67"]]
    (root / "breast_cancer.yaml").write_text(yaml.safe_dump({
        "name": "breast-cancer", "label": "label", "case_id": "case_id", "classes": ["benign", "malignant"],
        "modalities": [{"name": g, "type": "tabular", "columns": c, **({"features": c} if g != "error" else {})}
                       for g, c in groups.items()],  # "error" names its fields by its columns alone
        "labs": labs}))
    return root


def test_three_tabular_groups_train_score_and_predict_by_name(tabular_groups, tmp_path):
    import argparse

    from core.cli import data_path

    spec = tabular_groups / "breast_cancer.yaml"
    done = _cli("train", "--quick", "--data", str(tabular_groups), "--spec", str(spec), "--out", str(tmp_path / "ckpt"))
    assert done.returncode == 0, done.stderr[-3000:]
    # the lab empty in training is said once, in words; numpy's warning about its empty mean never shows
    assert done.stderr.count("never measured in the training split") == 1 and "ki67 (mean)" in done.stderr
    assert "Mean of empty slice" not in done.stderr and "RuntimeWarning" not in done.stderr
    meta = json.loads((tmp_path / "ckpt" / "meta.json").read_text())
    assert None not in meta["guard"]["thresholds"].values()  # that lab left the group's guard threshold NaN
    # the checkpoint records the spec: `score --data DIR` finds it again, and without --data it is the default
    scored = _cli("score", "--checkpoint", str(tmp_path / "ckpt"), "--data", str(tabular_groups), "--json")
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert json.loads(scored.stdout)["other_data"] is None
    no_data = argparse.Namespace(checkpoint=str(tmp_path / "ckpt"), data=None, spec=None)
    assert data_path(no_data, checkpoint=True) == spec.resolve()
    rows = {r["condition"]: r for r in json.loads(scored.stdout)["rows"] if r["group"] == "all"}
    assert len([c for c in rows if "+" in c or c in ("mean", "error", "worst")]) == 7  # every availability pattern
    assert rows["mean+error+worst"]["auroc"] > 0.9
    df = pd.read_csv(tabular_groups / "manifest.csv")
    worst = yaml.safe_load(spec.read_text())["modalities"][2]["columns"]
    df.loc[[0], worst].to_csv(tmp_path / "worst.csv", index=False)
    pred = _cli("predict", "--checkpoint", str(tmp_path / "ckpt"), "--input", f"worst={tmp_path / 'worst.csv'}", "--json")
    assert pred.returncode == 0, pred.stderr[-2000:]
    out = json.loads(pred.stdout)
    assert out["present"] == ["worst"] and set(out["synthesized"]) == {"mean", "error"}
    groups = {m["name"]: m["columns"] for m in yaml.safe_load(spec.read_text())["modalities"]}
    for name in ("mean", "error"):  # every assumed lab of every synthesized group: its own field, an interval
        assumed = out["synthesized"][name]["expected_values"]
        assert assumed and set(assumed) <= set(groups[name]) - {"ki67"}, (name, sorted(assumed))
        for v in assumed.values():
            assert v["low"] <= v["median"] <= v["high"], (name, v)
    bad = _cli("predict", "--checkpoint", str(tmp_path / "ckpt"), "--input", "nosuch=x.csv")
    assert bad.returncode == 2 and "no such modality" in bad.stderr


def test_tiny_cohort_gets_its_card(tmp_path):
    r = _cli("cohort", "--out", str(tmp_path / "c60"), "--n", "60")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "c60" / "manifest.csv").exists()
