"""The embedded cohort: deterministic, clinically structured, with truth consistent with its content."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.data.cohort import scenario as sc
from core.data.cohort.generate import assign_diagnoses, ensure_cohort, generate_cohort
from core.data.cohort.sample import sample_case
from core.data.dataset import Dataset
from core.data.readers import read_labs
from core.startup import phase


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix in (".png", ".txt", ".csv", ".json", ".yaml"):
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_files_different_seed_different(tmp_path):
    a = generate_cohort(tmp_path / "a", n=80, seed=5, workers=1, progress=False, card=False)
    b = generate_cohort(tmp_path / "b", n=80, seed=5, workers=2, progress=False, card=False)
    c = generate_cohort(tmp_path / "c", n=80, seed=6, workers=1, progress=False, card=False)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_prevalence_rare_classes_and_splits(default_cohort):
    m = pd.read_csv(default_cohort / "manifest.csv")
    assert len(m) == 3000
    prev = m.diagnosis.value_counts(normalize=True)
    for c, p in sc.PREVALENCE.items():
        assert abs(prev[c] - p) < 1e-3
    assert len(sc.CLASSES) >= 5
    assert all(prev[c] <= 0.05 for c in sc.RARE_CLASSES) and len(sc.RARE_CLASSES) >= 2
    # every diagnosis in every split, in about the same proportion
    for split, frac in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        sub = m[m.split == split]
        assert abs(len(sub) / len(m) - frac) < 0.01
        assert set(sub.diagnosis) == set(sc.CLASSES)


def test_patients_with_several_visits_stay_in_one_split(small_cohort):
    """About 15 % of the cases are another visit of an earlier patient: same sex, a year or two older, the same
    comorbidities (and maybe new ones); the split is by patient, so no patient is in training and test."""
    m = pd.read_csv(small_cohort / "manifest.csv", keep_default_na=False)
    visits = m.groupby("patient_id")
    assert 0.08 < 1 - visits.ngroups / len(m) < 0.22
    assert (visits["split"].nunique() == 1).all()
    assert Dataset.open(small_cohort).groups_across_splits() == {}
    seed = json.loads((small_cohort / "cohort.json").read_text())["seed"]
    again = m[m.patient_id.duplicated(keep=False)]
    for _, group in list(again.groupby("patient_id"))[:20]:
        cases = [sample_case(seed, int(c[4:]) - 1, dx, 32, 0.0, int(group.case_id.iloc[0][4:]) - 1,
                             group.diagnosis.iloc[0]) for c, dx in zip(group.case_id, group.diagnosis)]
        assert len({c.male for c in cases}) == 1 and max(c.age for c in cases) - min(c.age for c in cases) <= 2
        assert all(set(cases[0].comorbidities) <= set(c.comorbidities) for c in cases)


def test_notes_negate_findings_in_the_words_of_typical_cases(small_cohort):
    """Issue 24: notes deny other diagnoses' findings in a typical case's words (pertinent negatives), some deny
    one of their own diagnosis's findings, some histories rule out another diagnosis by name; the detector reads
    every one of them as negated."""
    from core.model.negation import is_negated

    own = pertinent = excluded = 0
    for _, row in pd.read_csv(small_cohort / "manifest.csv", keep_default_na=False).iterrows():
        truth = json.loads((small_cohort / row.truth_path).read_text())
        if not row.note_path:
            continue
        note = (small_cohort / row.note_path).read_text()
        for span in truth["note_spans"]:
            if span["finding"].startswith("diagnosis:"):
                excluded += 1
                assert span["negated"] and span["finding"] != f"diagnosis:{row.diagnosis}"
            elif span["negated"] and span["finding"] in sc.NOTE_EFFECTS[row.diagnosis]:
                own += 1
            elif span["negated"]:
                pertinent += 1
            if span["negated"]:
                assert is_negated(note, span["start"], span["end"]), (span["text"], note)
    assert pertinent > 300 and own > 50 and excluded > 10


def test_missingness_realistic_and_case_dependent(default_cohort):
    ds = Dataset.open(default_cohort)
    pres = ds.presence()
    assert pres.any(1).all(), "every case has at least one modality"
    complete = pres.all(1).mean()
    assert 0.33 <= complete <= 0.5
    for j in range(3):
        assert 0.1 < 1 - pres[:, j].mean() < 0.4
    # images are missing more often for the mildest presentations than for suspected pneumothorax
    img = pres[:, ds.spec.modality_names.index("image")]
    normal = ds.labels == ds.classes.index("no_acute_disease")
    ptx = ds.labels == ds.classes.index("pneumothorax")
    assert (1 - img[normal].mean()) > (1 - img[ptx].mean()) + 0.15


def test_note_spans_match_text_and_negations_are_not_decisive(small_cohort):
    from core.model.negation import is_negated

    m = pd.read_csv(small_cohort / "manifest.csv", keep_default_na=False)
    n_decisive = n_negated = 0
    for _, row in m.iterrows():
        truth = json.loads((small_cohort / row.truth_path).read_text())
        if not row.note_path:
            assert "note_spans" not in truth
            continue
        text = (small_cohort / row.note_path).read_text(encoding="utf-8")
        for span in truth["note_spans"]:
            assert text[span["start"]:span["end"]] == span["text"]
            if span["negated"]:
                n_negated += 1
                assert not span["decisive"]
                assert is_negated(text, span["start"], span["end"]), (span["text"], text)  # before or after it
            n_decisive += span["decisive"]
            if span["decisive"]:
                assert span["finding"] in sc.NOTE_DECISIVE[row.diagnosis]
    assert n_decisive > 100 and n_negated > 50


def test_image_masks_mark_the_finding(small_cohort):
    m = pd.read_csv(small_cohort / "manifest.csv", keep_default_na=False)
    checked = 0
    for _, row in m.iterrows():
        truth = json.loads((small_cohort / row.truth_path).read_text())
        if "image_mask" not in truth:
            continue
        img = np.asarray(Image.open(small_cohort / row.image_path), dtype=float)
        label = np.asarray(Image.open(small_cohort / truth["image_mask"]))
        assert label.shape == img.shape
        for f, v in truth["image_mask_values"].items():
            inside = label == v
            assert inside.any()
            if f in ("consolidation", "pleural_effusion", "wedge_opacity"):  # opacities are brighter than lung
                ring = (label == 0)
                assert img[inside].mean() > np.percentile(img[ring], 25)
            if f == "pneumothorax":  # air without lung markings is darker than the body around it
                assert img[inside].mean() < img[label == 0].mean()
            checked += 1
    assert checked > 50


def test_signal_labs_are_measured_and_deviate(default_cohort):
    ds = Dataset.open(default_cohort)
    catalogue = ds.spec.lab_features("labs")
    crp = {"pneumonia": [], "no_acute_disease": []}
    for i in ds.indices("train")[:900]:
        truth = json.loads((default_cohort / ds.manifest.at[i, "truth_path"]).read_text())
        p = ds.path(i, "labs")
        if p is None:
            continue
        panel = read_labs(p, catalogue)
        assert set(truth["signal_labs"]) <= set(panel.values)
        dx = ds.classes[ds.labels[i]]
        if dx in crp and "crp" in panel.values:
            crp[dx].append(panel.values["crp"].value)
    assert np.median(crp["pneumonia"]) > 4 * np.median(crp["no_acute_disease"])


def test_card_shows_no_single_modality_suffices(default_cohort):
    card = json.loads((default_cohort / "card.json").read_text())
    auc = card["separability_auc"]
    singles = [v for k, v in auc.items() if "complete" in k and "fusion" not in k]
    fused = auc["all three, late fusion (complete cases)"]
    assert all(0.7 < s < 0.93 for s in singles), singles
    assert fused > max(singles) + 0.03
    text = (default_cohort / "DATASET_CARD.md").read_text()
    assert "Missingness" in text and "macro AUC" in text


@pytest.mark.filterwarnings("ignore:The least populated class")  # a 100-case card has classes of 1-2 cases
def test_ensure_cohort_says_what_it_does_on_first_use_only(tmp_path, capsys):
    """`make run` on a fresh checkout: every step of the cohort says what it is and how long it takes (issue 15:
    the card was ~100 s of silence after the bar); once the cohort is in place, nothing is printed."""
    folder = tmp_path / "cohort"
    ensure_cohort(folder, n=100, progress=False)  # the app's path: silent
    assert capsys.readouterr() == ("", "")

    params = json.loads((folder / "cohort.json").read_text())
    (folder / "cohort.json").write_text(json.dumps({**params, "generator_version": "older"}))
    ensure_cohort(folder, n=100)
    out, err = capsys.readouterr()
    assert out == ""  # stdout stays clean for commands that print JSON
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and not line.startswith("cohort:")]
    assert lines[0].startswith(f"Generating the embedded cohort (100 synthetic cases) in {folder}: its generator")
    assert "s in all" in lines[0]
    assert lines[1].startswith("Writing the dataset card (how much each modality tells alone: about ")
    assert any(line.strip().startswith("done in ") for line in lines)
    assert lines[-1].startswith("The cohort is ready (")
    assert "cohort: 100%" in err  # the bar between the first line and the card
    assert json.loads((folder / "cohort.json").read_text())["generator_version"] != "older"

    ensure_cohort(folder, n=100)  # in place: quiet
    assert capsys.readouterr() == ("", "")


def test_a_cohort_is_rebuilt_once_beside_the_folder_and_swapped_in(tmp_path):
    """Two processes (here threads) that find the cohort out of date: one builds it beside the folder, the
    other waits and finds it in place; a reader of the folder never meets a half-written cohort, and no
    building or old folder is left behind."""
    import threading

    folder = tmp_path / "cohort"
    ensure_cohort(folder, n=60, progress=False)
    params = json.loads((folder / "cohort.json").read_text())
    (folder / "cohort.json").write_text(json.dumps({**params, "generator_version": "older"}))
    news: list[list[tuple[float, str]]] = [[], []]
    seen_incomplete = []

    def reader(stop: threading.Event) -> None:  # the old cohort stays whole until the new one replaces it
        while not stop.is_set():
            try:  # one folder (same inode) with a manifest but without its images would be half a cohort
                before = folder.stat().st_ino
                broken = (folder / "manifest.csv").exists() and not (folder / "images").is_dir()
                if broken and folder.stat().st_ino == before:
                    seen_incomplete.append(True)
            except FileNotFoundError:
                pass  # between the two renames the name is free for an instant: no cohort, never half of one

    stop = threading.Event()
    watching = threading.Thread(target=reader, args=(stop,))
    watching.start()
    builders = [threading.Thread(target=ensure_cohort, args=(folder,), kwargs=dict(
        n=60, progress=False, on_progress=lambda f, text, i=i: news[i].append((f, text)))) for i in range(2)]
    for t in builders:
        t.start()
    for t in builders:
        t.join()
    stop.set()
    watching.join()
    assert sorted(len(n) > 0 for n in news) == [False, True]  # built once
    built = next(n for n in news if n)
    assert [f for f, _ in built] == sorted(f for f, _ in built) and "writing the dataset card" in built[-1][1]
    assert json.loads((folder / "cohort.json").read_text())["generator_version"] != "older"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cohort.lock", "cohort"] and not seen_incomplete


def test_phase_reminds_while_a_step_runs():
    """A step that cannot report (a library call) still gets a line every few seconds."""

    class Stream(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.reminded = threading.Event()

        def write(self, text: str) -> int:
            if "still" in text:
                self.reminded.set()
            return super().write(text)

    stream = Stream()
    with phase("Fitting the models", "about 5 s", every=0.01, stream=stream):
        assert stream.reminded.wait(30)  # the step runs until a reminder has come
    lines = stream.getvalue().splitlines()
    assert lines[0] == "Fitting the models (about 5 s)…"
    assert lines[1].startswith("  … still fitting the models (")
    assert lines[-1].startswith("  done in ")
    quiet = Stream()
    with phase("Fitting the models", enabled=False, stream=quiet):
        pass
    assert quiet.getvalue() == ""


def _draws_digest(redundancy: float | None) -> str:
    """What the sampler drew for the first 60 cases of seed 7, less the pixels (whose last bits may vary with
    numpy's SIMD paths): findings, notes, labs, presence."""
    labels, _, _ = assign_diagnoses(60, 7)
    h = hashlib.sha256()
    for i, dx in enumerate(labels):
        c = sample_case(7, i, dx, 32) if redundancy is None else sample_case(7, i, dx, 32, redundancy=redundancy)
        h.update(repr((c.case_id, dx, round(c.severity, 6), c.age, c.male, c.comorbidities, c.present, c.portable,
                       {f: sorted(p) for f, p in c.image_findings.items()}, c.note, c.labs, c.signal_labs)).encode())
    return h.hexdigest()[:16]


def test_redundancy_zero_draws_exactly_the_default_cohort():
    """Cached features are keyed by the default cohort's data fingerprint: redundancy 0 must not move one draw.
    The pinned digest is that of the sampler with atypical negations and repeat visits (issue 24); a deliberate
    change to the generator updates it."""
    assert _draws_digest(None) == _draws_digest(0.0) == "9671b0cccfd99c12"
    assert _draws_digest(0.8) != _draws_digest(0.0)
    with pytest.raises(ValueError):
        sample_case(7, 0, "pneumonia", 32, redundancy=1.5)


def test_redundancy_shares_silences_and_firms_findings():
    """Issue 17 (d): with redundancy the modalities are atypical together and show their findings more often,
    so each tells more of the same thing; who the patient is and which modalities are missing stay the same."""
    labels, _, _ = assign_diagnoses(300, 7)
    by_r = {r: [sample_case(7, i, labels[i], 32, redundancy=r) for i in range(300)] for r in (0.0, 0.8, 1.0)}

    def agree(cases) -> float:  # all three modalities silent, or none
        return float(np.mean([len(set(c.silent.values())) == 1 for c in cases]))

    def note_findings(cases) -> float:  # diagnostic note findings per case whose note shows the diagnosis
        shown = [c for c in cases if not c.silent["note"] and c.note is not None and c.diagnosis != "no_acute_disease"]
        return float(np.mean([sum(f in sc.NOTE_EFFECTS[c.diagnosis] for f in c.note_findings) for c in shown]))

    assert agree(by_r[0.8]) > agree(by_r[0.0]) + 0.25 and agree(by_r[1.0]) == 1.0
    assert note_findings(by_r[0.8]) > note_findings(by_r[0.0]) + 0.2
    for a, b in zip(by_r[0.0], by_r[0.8]):
        assert (a.age, a.severity, a.comorbidities) == (b.age, b.severity, b.comorbidities)


@pytest.mark.filterwarnings("ignore:The least populated class")  # a 60-case card has classes of 1-2 cases
def test_redundancy_is_recorded_only_when_non_zero(tmp_path, monkeypatch):
    """cohort.json (and so ensure_cohort's check) carries redundancy only when it is not 0: a default cohort keeps
    exactly its keys and is not rebuilt; a redundant one is rebuilt when asked for the default; the CLI passes it."""
    import core.data.cohort.generate as gen
    from core.cli import main

    folder = tmp_path / "cohort"
    ensure_cohort(folder, n=60, image_size=32, progress=False)
    assert set(json.loads((folder / "cohort.json").read_text())) == {"generator_version", "n", "seed", "image_size"}
    ensure_cohort(folder, n=60, image_size=32, progress=False, redundancy=0.8)
    assert json.loads((folder / "cohort.json").read_text())["redundancy"] == 0.8
    assert "redundancy 0.8" in (folder / "DATASET_CARD.md").read_text()
    ensure_cohort(folder, n=60, image_size=32, progress=False)
    assert "redundancy" not in json.loads((folder / "cohort.json").read_text())

    assert main(["cohort", "--out", str(tmp_path / "cli"), "--n", "60", "--image-size", "32", "--no-card",
                 "--workers", "1", "--redundancy", "0.5"]) == 0
    assert json.loads((tmp_path / "cli" / "cohort.json").read_text())["redundancy"] == 0.5

    asked = []
    monkeypatch.setattr(gen, "ensure_cohort", lambda folder, **kw: asked.append((Path(folder).name, kw)) or folder)
    gen.redundant_cohort()
    gen.redundant_cohort(quick=True)
    assert [(name, kw["n"], kw["redundancy"]) for name, kw in asked] == [
        ("cohort-redundant", gen.DEFAULT_N, gen.REDUNDANT), ("cohort-quick-redundant", gen.QUICK_N, gen.REDUNDANT)]


def test_the_film_without_its_findings_differs_only_where_they_are():
    """The faithfulness baseline that removes the finding: the same film rendered without it."""
    from scipy import ndimage

    from core.data.cohort.sample import sample_case

    seen = 0
    for i in range(40):
        case = sample_case(7, i, "pneumonia", 128)
        if case.image_without_findings is None:
            continue
        seen += 1
        finding = np.zeros(case.image.shape, bool)
        for m in case.masks.values():
            finding |= m
        near = ndimage.binary_dilation(finding, iterations=4)
        diff = np.abs(case.image.astype(int) - case.image_without_findings.astype(int))
        assert diff[~near].max() <= 8 and diff[finding].mean() > 20
    assert seen >= 5


def test_note_lead_ins_are_written_without_findings_too():
    """"Symptoms began with" and "Of note," must not tell that a finding follows (the model had learned them)."""
    from core.data.cohort.sample import sample_case

    without = 0
    for i in range(60):
        case = sample_case(7, i, "no_acute_disease", 128)
        if case.note is None:
            continue
        leads = [s for s in case.note.split(". ") if s.lstrip().startswith(("Symptoms began with", "Of note", "Notable for", "Pt reports"))]
        findings = {m.finding for m in case.mentions if not m.negated}
        if leads and not findings & {"sudden_onset", "immobilization", "tb_exposure", "calf_swelling", "leg_edema",
                                     "chest_wall_pain"}:
            without += 1
    assert without >= 10
