"""Where things live. Data (the generated cohort, caches, the review database) goes under one data
directory outside the code: `RMD_DATA_DIR`, default `./data` beside the code (git-ignored)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
CHECKPOINTS = ROOT / "checkpoints"
DEFAULT_CHECKPOINT = CHECKPOINTS / "default"
CONFIGS = ROOT / "configs"


def data_dir() -> Path:
    return Path(os.environ.get("RMD_DATA_DIR", ROOT / "data")).expanduser()


def default_cohort_dir() -> Path:
    return data_dir() / "cohort"


def cache_dir() -> Path:
    return data_dir() / "cache"
