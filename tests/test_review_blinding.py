"""The review study stays blind (issue 29, items 3 and 8): its cases are never the Case explorer's demo
cases (the explorer shows every model output of those), prepared items are keyed on the case set, and
every model of the study reads the study's spec and is named by its own meta.json. Real checkpoint
folders (copies of the shipped one, meta.json rewritten through the checkpoint writer). The page side:
tests/test_review_models.py (no model number on an item; the admin sees why a model is not used)."""

from __future__ import annotations

import shutil

from core.checkpoint import read_meta, write_meta
from core.demo import demo_cases, study_cases
from core.paths import DEFAULT_CHECKPOINT
from core.review.models import cohort_spec, review_models, spec_of
from core.review.prepared import fingerprint


# ---- the study's cases ------------------------------------------------------------------------------------
def test_study_cases_are_disjoint_from_the_demo_cases_and_cover_every_diagnosis(default_dataset):
    ds = default_dataset
    study, demos = study_cases(ds), demo_cases(ds)
    assert {c.case_id for c in study}.isdisjoint({d.case_id for d in demos})
    assert {c.row for c in study}.isdisjoint({d.row for d in demos})
    assert {c.diagnosis for c in study} == set(ds.classes)  # rare diagnoses included
    assert len(study) == len({c.case_id for c in study}) == 2 * len(ds.classes)
    test, presence = set(ds.indices("test").tolist()), ds.presence()
    assert all(c.row in test and presence[c.row].all() for c in study)  # complete test cases, as the demos
    assert all(ds.classes[ds.labels[c.row]] == c.diagnosis and ds.case_id(c.row) == c.case_id for c in study)
    # the next complete cases after the demos' (stable for a cohort): each diagnosis's first study case
    # comes right after its last demo case
    for d in set(ds.classes):
        first = min(c.row for c in study if c.diagnosis == d)
        assert first > max(x.row for x in demos if x.diagnosis == d)


def test_prepared_items_are_keyed_on_the_case_set():
    meta = read_meta(DEFAULT_CHECKPOINT)
    a = fingerprint(meta, "manifest", ["RMD-1", "RMD-2"])
    assert a == fingerprint(meta, "manifest", ["RMD-1", "RMD-2"])
    assert a != fingerprint(meta, "manifest", ["RMD-1", "RMD-3"]) != fingerprint(meta, "manifest", [])


# ---- the models: the study's spec, their own names --------------------------------------------------------
def copy_checkpoint(tmp_path, name: str, **changes) -> str:
    """A real checkpoint folder: the shipped one with its meta.json rewritten (checksum recomputed)."""
    out = tmp_path / name
    shutil.copytree(DEFAULT_CHECKPOINT, out)
    meta = read_meta(out)
    data_info = {**meta["data_info"], **changes.pop("data_info", {})}
    meta = {**meta, "data_info": data_info, **changes}
    for key in [k for k, v in changes.items() if v is None]:
        meta.pop(key)
    write_meta(out, meta)
    read_meta(out)  # still a valid checkpoint
    return str(out)


def test_a_model_of_other_classes_or_modalities_is_skipped_with_its_reason(tmp_path, monkeypatch, default_dataset):
    assert spec_of(read_meta(DEFAULT_CHECKPOINT)) == cohort_spec(default_dataset)  # the shipped model reads the study
    classes = copy_checkpoint(tmp_path, "binary", method="early_fusion", data_info={"classes": ["0", "1"]})
    mods = read_meta(DEFAULT_CHECKPOINT)["data_info"]["modalities"][:2]
    no_labs = copy_checkpoint(tmp_path, "no_labs", method="masked_attention", data_info={"modalities": mods})
    monkeypatch.setenv("RMD_REVIEW_MODELS", f"{DEFAULT_CHECKPOINT},{classes},{no_labs}")
    found = review_models(cohort_spec(default_dataset))
    assert found.names == ["robustmdiff"]
    why = dict(found.skipped)
    assert "classes (0, 1) are not the study's (no_acute_disease" in why[classes]
    assert "modalities" in why[no_labs] and "cannot explain the study's cases" in why[no_labs]
    # listed alone, it is not taken as the study's reference: the study has no model rather than a wrong one
    monkeypatch.setenv("RMD_REVIEW_MODELS", classes)
    alone = review_models(cohort_spec(default_dataset))
    assert alone.names == [] and [p for p, _ in alone.skipped] == [classes]
    assert review_models().names == []  # the default reference: the spec the shipped checkpoint read


def test_each_model_is_named_by_its_own_meta(tmp_path, monkeypatch, default_dataset):
    renamed = copy_checkpoint(tmp_path, "some_folder", method="early_fusion")
    unnamed = copy_checkpoint(tmp_path, "my_model", method=None)  # no method in its meta: its folder, never "robustmdiff"
    monkeypatch.setenv("RMD_REVIEW_MODELS", f"{renamed},{unnamed}")
    found = review_models(cohort_spec(default_dataset))
    assert found.names == ["early_fusion", "my_model"] and "robustmdiff" in found.missing
    assert [m.label for m in found.models] == ["Early fusion", "My model"]
