"""Shared fixtures. The default cohort is generated once (deterministic) into the data directory,
the same place `make run` and the shipped checkpoint's tests use."""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # parallel workers share the cores: one thread each avoids oversubscription (and its spin-waits),
    # for this process and the subprocesses tests start
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

from core.data.cohort.generate import ensure_cohort, generate_cohort  # noqa: E402
from core.paths import CONFIGS, ROOT, data_dir, default_cohort_dir  # noqa: E402


# The heaviest test files, longest first (seconds of a fresh clone's run on this 2-core machine, `--durations`).
# `make test` runs the files on two workers in collection order (`--dist loadfile --no-loadscope-reorder`): with
# the longest first, neither worker is left with a long file while the other idles at the end (xdist's default
# order, most tests first, put two of the longest last). Only the order changes; a file not listed keeps its place.
HEAVY_FILES = ("test_model.py", "test_evaluation.py", "test_explain.py", "test_cohort.py", "test_device.py",
               "test_own_data.py", "test_browser.py", "test_page_polish.py", "test_distributed.py", "test_bench.py",
               "test_negation.py", "test_review.py", "test_explanation_trust.py", "test_review_models.py",
               "test_feature_cache.py", "test_regimes.py", "test_hardening.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(HEAVY_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's tests as written


@contextmanager
def _exclusive(name: str, folder: Path | None = None):
    """A file lock in `folder` (default: the data directory), so that parallel test workers build shared data once."""
    folder = folder or data_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run_dir(tmp_path_factory) -> Path:
    """A folder of this test run shared by its parallel workers (each worker has its own base temp folder)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def default_cohort() -> Path:
    """The embedded default cohort (3,000 cases), generated on first use. `ensure_cohort` takes its own
    lock (data/.cohort.lock); holding a second one here on that file deadlocked a fresh clone."""
    return ensure_cohort(default_cohort_dir(), progress=False)


@pytest.fixture(scope="session")
def default_dataset(default_cohort):
    from core.data.dataset import Dataset

    return Dataset.open(default_cohort)


@pytest.fixture(scope="session")
def _shipped_test_split(default_dataset):
    """The default cohort's test split and its frozen-backbone features as the shipped checkpoint reads them
    (`split_features`: the test cases alone unless the whole cohort's features are cached; encoding all 3,000
    cases would cost CI minutes). Cached on disk after the first run."""
    from core.checkpoint import read_meta
    from core.features import split_features
    from core.model.config import Config
    from core.paths import DEFAULT_CHECKPOINT

    with _exclusive("features"):
        config = Config.from_dict(read_meta(DEFAULT_CHECKPOINT)["config"]).model
        return split_features(default_dataset, config, "test", progress=False)


@pytest.fixture(scope="session")
def test_split(_shipped_test_split):
    """A data set holding the default cohort's test split (`indices("test")`), rows as in `test_split_features`."""
    return _shipped_test_split[0]


@pytest.fixture(scope="session")
def test_split_features(_shipped_test_split):
    """Features of `test_split`, paired with `predictor` in tests (e.g. its note negation setting)."""
    return _shipped_test_split[1]


@pytest.fixture(scope="session")
def predictor():
    """The shipped default checkpoint, loaded once."""
    from core.inference import Predictor

    return Predictor.load()


@pytest.fixture(scope="session")
def quick_checkpoint(small_cohort, tmp_path_factory) -> Path:
    """A model trained for a few epochs on the small cohort (a minute), with `train --quick`'s 8 diffusion
    samples: for tests of the training loop, trained once per run and shared by the parallel workers. Twice the
    quick schedule's phase-1 epochs: on 210 training cases whose notes negate other diagnoses' findings, six
    epochs leave the logits so flat that the calibrated temperature sits at its lower bound."""
    from core.model.config import Config, quick
    from core.training import train

    root = _run_dir(tmp_path_factory)
    out = root / "quick-checkpoint"
    with _exclusive("quick-checkpoint", root):
        if not (out / "meta.json").exists():
            config = quick(Config.load(CONFIGS / "default.yaml"), sampling=True).override("training", epochs=12)
            train(small_cohort, config, out, device="cpu", progress=False)
    return out


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory) -> Path:
    """A small cohort (300 cases, no card) for fast tests, generated once per run and shared by the workers
    (read only)."""
    root = _run_dir(tmp_path_factory)
    out, done = root / "small-cohort", root / "small-cohort.done"
    with _exclusive("small-cohort", root):
        if not done.exists():
            generate_cohort(out, n=300, seed=3, workers=1, progress=False, card=False)
            done.touch()
    return out


@pytest.fixture
def out_dir(request) -> Path:
    """A per-test output folder kept after the run (screenshots, reports) under test-output/."""
    d = ROOT / "test-output" / request.node.name
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def identified_dicom() -> tuple[bytes, list[str]]:
    """A real CT (pydicom's CT_small) carrying planted patient identifiers and a private tag, and the strings
    that must never reach anything the project shows, logs or stores."""
    import io

    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    secrets = {"PatientName": "Zyxwv^Qutsr", "PatientID": "MRN-31415926", "PatientBirthDate": "19270101",
               "PatientAddress": "77 Hidden Road", "AccessionNumber": "ACC-27182818", "InstitutionName": "Nowhere Clinic"}
    for k, v in secrets.items():
        setattr(ds, k, v)
    ds.add_new(0x00111010, "LO", "PRIVATE-SECRET-42")
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), list(secrets.values()) + ["PRIVATE-SECRET-42", "Zyxwv", "31415926"]


@pytest.fixture(scope="session")
def own_model_of(tmp_path_factory):
    """`own_model_of(name)`: (checkpoint, data folder) of a data set of tests/own_models.py ("reports",
    "breast_cancer", "derm"), trained once per test run and shared by the parallel workers."""
    from own_models import own_model

    root = _run_dir(tmp_path_factory) / "own-models"
    return lambda name: own_model(name, root)
