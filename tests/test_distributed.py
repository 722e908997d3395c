"""Training on several processes (torchrun, gloo on the CPU): sharded feature extraction merges back into
the single-process table, and a step of two processes on a global batch is the step of one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file

from core.checkpoint import load_checkpoint
from core.data.dataset import Dataset
from core.features import FeatureTable, modalities_of, table_from_inputs
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


def _train(config: Path, data: Path, out: Path, env: dict, processes: int) -> subprocess.CompletedProcess:
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] if processes > 1 else []
    return subprocess.run([sys.executable, *launcher, "-m", "core", "train", "--config", str(config), "--data", str(data),
                           "--out", str(out), "--device", "cpu"], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=900)


def test_torchrun_two_processes_step_like_one(small_cohort, tmp_path):
    """One optimiser step per phase on one global batch: two processes (each half the rows, gradients
    averaged by DistributedDataParallel) end with the parameters of one process on the whole batch. Without
    the averaging each process would step on its own half and the parameters would part by about 2 x lr
    (AdamW's first step moves each weight by about lr in the direction of its gradient's sign). Dropout is
    off here: its masks come from each process's own stream (see core/distributed.py)."""
    config = Config.load(CONFIGS / "default.yaml").override(
        "training", epochs=1, diffusion_epochs=1, finetune_epochs=1, patience=1, batch_size=512).override(
        "model", dropout=0.0).override("diffusion", samples=8)  # the calibration after the step: 8 samples suffice
    path = tmp_path / "one_step.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    env = {**os.environ, "RMD_DATA_DIR": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}  # fresh feature cache
    two = _train(path, small_cohort, tmp_path / "two", env, 2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 processes" in two.stdout
    one = _train(path, small_cohort, tmp_path / "one", env, 1)
    assert one.returncode == 0, one.stderr[-3000:]
    meta_two, meta_one = (json.loads((tmp_path / d / "meta.json").read_text()) for d in ("two", "one"))
    assert (meta_two["processes"], meta_one["processes"]) == (2, 1)
    assert [h["epoch"] for h in meta_two["history"]] == [h["epoch"] for h in meta_one["history"]] == [0, 0, 0]
    a, b = load_file(str(tmp_path / "two" / "model.safetensors")), load_file(str(tmp_path / "one" / "model.safetensors"))
    assert a.keys() == b.keys()
    trained = {name for name, _ in load_checkpoint(tmp_path / "one")[0].named_parameters()}
    lr = config.training.lr
    for k in a:
        if k in trained:  # what the optimiser stepped: equal within float rounding (measured: 4e-6, 0.4 % of lr)
            assert float((a[k].double() - b[k].double()).abs().max()) < 0.02 * lr, k
        else:  # what was fitted afterwards on the same validation cases (calibration, lab decoders)
            torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4, msg=k)

    # the features the two processes extracted in halves equal the single-process ones
    cached = [p for p in (tmp_path / "data" / "cache").glob("features-*") if (p / "modalities.json").exists()]
    assert len(cached) == 1
    # (on the first rows, which alternate between the processes: encoding all 300 again costs a minute)
    merged, ds = FeatureTable.load(cached[0]), Dataset.open(small_cohort)
    np.testing.assert_array_equal(merged.present, ds.presence())
    rows = list(range(8))
    alone = table_from_inputs([ds.load(i) for i in rows], *modalities_of(ds.spec), config.model, "cpu")
    np.testing.assert_array_equal(merged.present[rows], alone.present)
    np.testing.assert_array_equal(merged.keys[rows], alone.keys)
    np.testing.assert_allclose(merged.image["image"][rows], alone.image["image"], atol=1e-4)
    np.testing.assert_allclose(merged.tabular["labs"][rows], alone.tabular["labs"], equal_nan=True)
