"""The feature cache: cases stream through in chunks into a folder of memory-mapped arrays, and what is
read back equals the features computed in one go."""

from __future__ import annotations

import numpy as np

import core.features as features
from core.data.dataset import Dataset
from core.features import FeatureTable, dataset_features, modalities_of, split_features, table_from_inputs
from core.model.config import Config
from core.paths import CONFIGS


def test_chunked_memory_mapped_cache_equals_one_pass(small_cohort, tmp_path, monkeypatch):
    monkeypatch.setenv("RMD_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(features, "CHUNK", 64)  # 150 cases: three chunks spilled to disk, then concatenated
    ds = Dataset.open(small_cohort).subset(np.arange(150))  # of its own, every split in it (it is encoded 2½ times)
    config = Config.load(CONFIGS / "default.yaml").model
    # a command that reads the test split alone, before anything is cached, encodes the test cases alone
    test = ds.indices("test")
    part, part_table = split_features(ds, config, "test", progress=False)
    assert len(part) == len(part_table) == len(test) and list(part.indices("test")) == list(range(len(test)))
    assert [part.case_id(i) for i in range(len(part))] == [ds.case_id(i) for i in test]
    assert (part.labels == ds.labels[test]).all() and part.fingerprint() != ds.fingerprint()
    cached = dataset_features(ds, config, progress=False)
    assert split_features(ds, config, "test", progress=False)[0] is ds  # once the whole set is cached, its table
    assert isinstance(cached.image["image"], np.memmap) and isinstance(cached.text["note"][0], np.memmap)
    again = dataset_features(ds, config, progress=False)  # now read from the cache
    mods, labs = modalities_of(ds.spec)
    whole = table_from_inputs([ds.load(i) for i in range(len(ds))], mods, labs, config)
    for t in (cached, again):
        np.testing.assert_array_equal(t.present, whole.present)
        np.testing.assert_array_equal(t.keys, whole.keys)
        np.testing.assert_allclose(t.image["image"], whole.image["image"], atol=1e-4)
        np.testing.assert_array_equal(t.tabular["labs"], whole.tabular["labs"])
        assert all(np.allclose(a, b, atol=1e-4) for a, b in zip(t.text["note"], whole.text["note"]))
    np.testing.assert_allclose(part_table.image["image"], whole.image["image"][test], atol=1e-4)
    np.testing.assert_array_equal(part_table.tabular["labs"], whole.tabular["labs"][test])
    assert all(np.allclose(a, whole.text["note"][i], atol=1e-4) for a, i in zip(part_table.text["note"], test))
    left = [p.name for p in (tmp_path / "cache").iterdir()  # the data identity's own, and the encoders' locks
            if p.name != "identity" and not p.name.endswith(".lock")]
    assert len(left) == 2 and all(n.startswith("features-") for n in left)  # the test split's, the whole's; no scratch
    rows = np.array([5, 0, 149])
    batch = cached.batch(rows)
    np.testing.assert_allclose(batch["image"]["x"].numpy(), whole.image["image"][rows], atol=1e-4)
    stacked = FeatureTable.stack([whole, whole])
    assert len(stacked) == 2 * len(whole) and len(stacked.text["note"]) == 2 * len(whole)


def test_two_processes_asking_for_the_same_features_encode_them_once(small_cohort, tmp_path, monkeypatch):
    """A second caller (here a thread: the lock is per open file, as between processes) waits for the first
    one's encoding and reads its cache, instead of encoding the same cases again into the same folder."""
    import threading

    monkeypatch.setenv("RMD_DATA_DIR", str(tmp_path))
    ds = Dataset.open(small_cohort).subset(np.arange(24))
    config = Config.load(CONFIGS / "default.yaml").model
    encoded: list[str] = []
    tables: dict[str, FeatureTable] = {}

    errors: list[BaseException] = []

    def ask(name: str) -> None:
        try:
            tables[name] = dataset_features(ds, config, progress=False,
                                            on_progress=lambda done, total: encoded.append(name) if done == 0 else None)
        except BaseException as e:  # noqa: BLE001 - a thread's error would otherwise only be a warning
            errors.append(e)

    callers = [threading.Thread(target=ask, args=(name,)) for name in ("first", "second")]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert not errors, errors
    assert len(encoded) == 1 and set(tables) == {"first", "second"}  # one encoded; the other read the cache
    np.testing.assert_array_equal(tables["first"].image["image"], tables["second"].image["image"])
    np.testing.assert_array_equal(tables["first"].present, tables["second"].present)
