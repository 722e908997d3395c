"""Shared fixtures. The default cohort is generated once (deterministic) into the data directory,
the same place `make run` and the shipped checkpoint's tests use."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from core.data.cohort.generate import ensure_cohort, generate_cohort  # noqa: E402
from core.paths import ROOT, default_cohort_dir  # noqa: E402


@pytest.fixture(scope="session")
def default_cohort() -> Path:
    """The embedded default cohort (3,000 cases), generated on first use; a file lock keeps
    parallel test workers from writing it twice."""
    import fcntl

    folder = default_cohort_dir()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / ".cohort.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ensure_cohort(folder, progress=False)
        fcntl.flock(lock, fcntl.LOCK_UN)
    return folder


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory) -> Path:
    """A small cohort (300 cases, no card) for fast tests."""
    return generate_cohort(tmp_path_factory.mktemp("cohort") / "c", n=300, seed=3, workers=1, progress=False, card=False)


@pytest.fixture
def out_dir(request) -> Path:
    """A per-test output folder kept after the run (screenshots, reports) under test-output/."""
    d = ROOT / "test-output" / request.node.name
    d.mkdir(parents=True, exist_ok=True)
    return d
