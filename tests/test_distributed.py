"""Training on several processes (torchrun, gloo on the CPU): sharded feature extraction merges back into
the single-process table, and two processes train a model as good as one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from core.data.dataset import Dataset
from core.features import FeatureTable, dataset_features
from core.model.config import Config
from core.paths import CONFIGS, ROOT


def test_interleaved_shards_restore_the_row_order():
    n, w = 11, 3
    mods = [("image", "image"), ("note", "text"), ("labs", "tabular")]
    full = FeatureTable(mods, np.arange(n * 3).reshape(n, 3) % 2 == 0, np.arange(n * 3).reshape(n, 3),
                        image={"image": np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((n, 2, 2, 2))},
                        text={"note": [np.full((i % 3 + 1, 4), i, np.float32) for i in range(n)]},
                        tabular={"labs": np.arange(n * 2, dtype=np.float32).reshape(n, 2)})
    shards = [FeatureTable(mods, full.present[r::w], full.keys[r::w], image={"image": full.image["image"][r::w]},
                           text={"note": full.text["note"][r::w]}, tabular={"labs": full.tabular["labs"][r::w]})
              for r in range(w)]
    merged = FeatureTable.interleave(shards)
    np.testing.assert_array_equal(merged.present, full.present)
    np.testing.assert_array_equal(merged.keys, full.keys)
    np.testing.assert_array_equal(merged.image["image"], full.image["image"])
    np.testing.assert_array_equal(merged.tabular["labs"], full.tabular["labs"])
    assert all(np.array_equal(a, b) for a, b in zip(merged.text["note"], full.text["note"]))


def test_torchrun_two_processes_train_like_one(small_cohort, quick_checkpoint, tmp_path):
    env = {**os.environ, "RMD_DATA_DIR": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}  # fresh feature cache
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "core", "train", "--quick", "--data", str(small_cohort), "--out", str(tmp_path / "ddp"),
                          "--device", "cpu"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 processes" in out.stdout
    meta = json.loads((tmp_path / "ddp" / "meta.json").read_text())
    single = json.loads((quick_checkpoint / "meta.json").read_text())
    assert meta["processes"] == 2
    # the same schedule on the same data, with the batches split between two processes: as good, within noise
    assert abs(meta["test_metrics"]["natural"]["auroc"] - single["test_metrics"]["natural"]["auroc"]) < 0.06
    # the features the two processes extracted in halves equal the single-process ones
    cached = [p for p in (tmp_path / "data" / "cache").glob("features-*") if (p / "modalities.json").exists()]
    assert len(cached) == 1
    merged = FeatureTable.load(cached[0])
    alone = dataset_features(Dataset.open(small_cohort), Config.load(CONFIGS / "default.yaml").model, progress=False,
                             use_cache=False)
    np.testing.assert_array_equal(merged.present, alone.present)
    np.testing.assert_array_equal(merged.keys, alone.keys)
    np.testing.assert_allclose(merged.image["image"], alone.image["image"], atol=1e-4)
    np.testing.assert_allclose(merged.tabular["labs"], alone.tabular["labs"], equal_nan=True)
