"""The device policy: every device present gives the CPU's answers within its tolerance, the explained
class is the shown prediction, and the doctor command runs end to end (on the CPU here, on CUDA where
there is one)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from core.checkpoint import load_checkpoint
from core.data.dataset import Dataset
from core.doctor import TOLERANCE, compare
from core.explain.graph import CaseGraph
from core.features import dataset_features
from core.inference import predict_table
from core.paths import ROOT

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_each_device_gives_the_cpu_answers(quick_checkpoint, small_cohort, device):
    cpu, _ = load_checkpoint(quick_checkpoint, "cpu")
    dev, _ = load_checkpoint(quick_checkpoint, device)
    table = dataset_features(Dataset.open(small_cohort), cpu.config.model, progress=False)
    rows = np.flatnonzero(table.present.all(1))[:24]
    drop = np.zeros((len(rows), 3), bool)
    drop[::2, 1] = True
    drop[::3, 2] = True
    a, b = predict_table(dev, table, rows, drop, device=device), predict_table(cpu, table, rows, drop)
    r = compare(a.probs, b.probs)
    assert r["max_abs_diff"] <= TOLERANCE[torch.device(device).type] and r["flips_outside_near_ties"] == 0
    np.testing.assert_allclose(a.confidence, b.confidence, atol=TOLERANCE[torch.device(device).type] * 5, equal_nan=True)


@pytest.mark.parametrize("absent", [(), ("labs",), ("image", "note")])
def test_the_explained_class_is_the_shown_prediction(predictor, default_dataset, absent):
    for row in (3, 11, 27):
        case = default_dataset.load(row)
        if not any(case.inputs[n] is not None for n in {"image", "note", "labs"} - set(absent)):
            continue
        graph = CaseGraph(predictor, case, absent)
        shown = predictor.predict(case, absent=absent)
        assert predictor.classes[graph.target] == shown.prediction
        np.testing.assert_allclose(graph.probs.cpu().numpy(), [shown.probabilities[c] for c in predictor.classes],
                                   atol=1e-5)


def test_doctor_command_on_this_machine(small_cohort, tmp_path):
    out = subprocess.run([sys.executable, "-m", "core", "doctor", "--device", "cpu", "--data", str(small_cohort),
                          "--json", "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["passed"] and report["environment"]["device"] == "cpu"
    assert set(report["checks"]["cached_features"]) == {"image", "note", "labs", "image+note", "image+labs",
                                                        "note+labs", "image+note+labs"}
    assert all(r["class_agreement"] == 1.0 for r in report["checks"]["live_from_files"].values())
    assert (tmp_path / "doctor.md").read_text().strip().endswith("**PASSED**")
