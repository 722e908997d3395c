"""Write the embedded cohort to disk as real files: images, notes, lab tables, truth, manifest, spec, card."""

from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from core.data.cohort import scenario as sc
from core.data.cohort.sample import SampledCase, sample_case
from core.data.spec import DatasetSpec, ModalitySpec
from core.folder_lock import locked
from core.startup import phase, say

def _source_digest() -> str:
    """The generator's identity: a digest of its own source, so that any change regenerates cached cohorts."""
    h = hashlib.sha256()
    for p in sorted(Path(__file__).parent.glob("*.py")):
        if p.name != "card.py":
            h.update(p.read_bytes())
    return h.hexdigest()[:12]


GENERATOR_VERSION = _source_digest()
DEFAULT_N = 3000
DEFAULT_SEED = 7
DEFAULT_IMAGE_SIZE = 128
QUICK_N = 600  # the smaller cohort that --quick commands use
REDUNDANT = 0.8  # the redundancy of redundant_cohort(): modalities that share most of what they show (issue 17, d)


def cohort_spec(image_size: int = DEFAULT_IMAGE_SIZE) -> DatasetSpec:
    return DatasetSpec(
        name="acute-chest-cohort", label="diagnosis", case_id="case_id", split="split", group="patient_id",
        classes=list(sc.CLASSES), rare_classes=list(sc.RARE_CLASSES),
        modalities=[ModalitySpec("image", "image", column="image_path",  # chest radiographs (core/guard/domain.py)
                                 expect={"modality": ("CR", "DX"), "body_part": ("CHEST",)}),
                    ModalitySpec("note", "text", column="note_path"),
                    ModalitySpec("labs", "tabular", column="labs_path")],
        labs=list(sc.LAB_CATALOGUE), image_size=image_size)


REPEAT_VISITS = 0.15  # the share of cases that are another visit of an earlier case's patient


def assign_diagnoses(n: int, seed: int) -> tuple[list[str], list[str], list[int]]:
    """Exact prevalences (largest remainder) in a seeded order; for each case the index of its patient's first
    visit (about REPEAT_VISITS of the cases are a later visit of an earlier patient); and a 70/15/15 split by
    patient, stratified by the diagnosis of the patient's first visit, so that no patient spans two splits."""
    rng = np.random.default_rng([seed, 10**9])
    raw = np.array([sc.PREVALENCE[c] * n for c in sc.CLASSES])
    counts = np.floor(raw).astype(int)
    counts[np.argsort(-(raw - counts))[: n - counts.sum()]] += 1
    labels = np.repeat(np.array(sc.CLASSES, dtype=object), counts)
    rng.shuffle(labels)
    first = np.arange(n)
    repeat = rng.random(n) < REPEAT_VISITS
    for i in np.flatnonzero(repeat[1:]) + 1:
        first[i] = first[int(rng.integers(0, i))]
    patients = np.unique(first)
    split_of: dict[int, str] = {}
    for c in sc.CLASSES:
        idx = rng.permutation(patients[labels[patients] == c])
        n_train, n_val = round(len(idx) * 0.7), round(len(idx) * 0.15)
        for k, p in enumerate(idx):
            split_of[int(p)] = "train" if k < n_train else "val" if k < n_train + n_val else "test"
    return list(labels), [split_of[int(f)] for f in first], [int(f) for f in first]


def _write_case(out: Path, case: SampledCase) -> dict[str, str]:
    cid = case.case_id
    row = {"case_id": cid, "patient_id": case.patient_id, "diagnosis": case.diagnosis, "image_path": "",
           "note_path": "", "labs_path": "", "truth_path": f"truth/{cid}.json"}
    truth: dict = {"case_id": cid, "diagnosis": case.diagnosis, "severity": round(case.severity, 3),
                   "present": case.present, "comorbidities": case.comorbidities, "portable_film": case.portable}
    if case.image is not None:
        row["image_path"] = f"images/{cid}.png"
        Image.fromarray(case.image).save(out / row["image_path"], optimize=False)
        label_map = np.zeros(case.image.shape, dtype=np.uint8)
        findings = {}
        for f, params in case.image_findings.items():
            mask = case.masks.get(f)
            if mask is None or not mask.any():
                continue
            label_map[mask & (label_map == 0)] = sc.IMAGE_FINDINGS.index(f) + 1
            ys, xs = np.nonzero(mask)
            findings[f] = {**params, "pixels": int(mask.sum()),
                           "bbox": [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]}
        truth["image_findings"] = findings
        if findings:
            truth["image_mask"] = f"truth/{cid}_mask.png"
            truth["image_mask_values"] = {f: sc.IMAGE_FINDINGS.index(f) + 1 for f in findings}
            Image.fromarray(label_map).save(out / truth["image_mask"])
            if case.image_without_findings is not None:
                truth["image_without_findings"] = f"truth/{cid}_without_findings.png"
                Image.fromarray(case.image_without_findings).save(out / truth["image_without_findings"], optimize=False)
    if case.note is not None:
        row["note_path"] = f"notes/{cid}.txt"
        (out / row["note_path"]).write_text(case.note, encoding="utf-8")
        decisive = set(sc.NOTE_DECISIVE[case.diagnosis])
        truth["note_spans"] = [{"start": m.start, "end": m.end, "text": case.note[m.start:m.end], "finding": m.finding,
                                "negated": m.negated, "decisive": (not m.negated) and m.finding in decisive}
                               for m in case.mentions]
    if case.labs:
        row["labs_path"] = f"labs/{cid}.csv"
        with open(out / row["labs_path"], "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["name", "value", "unit"])
            w.writerows(case.labs)
        truth["signal_labs"] = case.signal_labs
    (out / row["truth_path"]).write_text(json.dumps(truth, indent=1), encoding="utf-8")
    return row


def _make(args: tuple[str, int, int, str, int, str, float, int, str]) -> dict[str, str]:
    out, seed, index, dx, size, split, redundancy, first, first_dx = args
    row = _write_case(Path(out), sample_case(seed, index, dx, size, redundancy, first, first_dx))
    row["split"] = split
    return row


def generate_cohort(out: str | Path, n: int = DEFAULT_N, seed: int = DEFAULT_SEED, image_size: int = DEFAULT_IMAGE_SIZE,
                    workers: int = 2, progress: bool = True, card: bool = True,
                    on_progress: Callable[[float, str], None] | None = None, redundancy: float = 0.0) -> Path:
    """Write the cohort into `out` (replacing a previous cohort there) and return the folder.
    `on_progress(fraction, text)` every 50 cases and before the card (the cases take about a third).
    `redundancy` in [0, 1]: how much the modalities share (see sample_case); 0 is the default cohort."""
    news = on_progress or (lambda f, text: None)
    if n < 50:
        raise ValueError("a cohort needs at least 50 cases to hold every diagnosis in every split")
    if not 0.0 <= redundancy <= 1.0:
        raise ValueError(f"redundancy must lie in [0, 1], not {redundancy}")
    out = Path(out)
    for sub in ("images", "notes", "labs", "truth"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir(parents=True, exist_ok=True)
    labels, splits, first = assign_diagnoses(n, seed)
    jobs = [(str(out), seed, i, labels[i], image_size, splits[i], redundancy, first[i], labels[first[i]])
            for i in range(n)]
    bar = tqdm(total=n, desc="cohort", unit="case", disable=not progress)
    rows: list[dict[str, str]] = []
    if workers > 1:
        # spawn, not fork: the app and the tests call this from processes that already run threads (the model
        # pool, torch's), and a forked child can inherit a lock that one of them held
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for row in pool.map(_make, jobs, chunksize=16):
                rows.append(row)
                bar.update()
                if len(rows) % 50 == 0:
                    news(0.35 * len(rows) / n, f"generating the synthetic cases: {len(rows)} of {n}")
    else:
        for job in jobs:
            rows.append(_make(job))
            bar.update()
            if len(rows) % 50 == 0:
                news(0.35 * len(rows) / n, f"generating the synthetic cases: {len(rows)} of {n}")
    bar.close()
    cols = ["case_id", "patient_id", "split", "diagnosis", "image_path", "note_path", "labs_path", "truth_path"]
    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    cohort_spec(image_size).save(out / "spec.yaml")
    (out / "cohort.json").write_text(json.dumps(_params(n, seed, image_size, redundancy), indent=1))
    if card:
        from core.data.cohort.card import write_card

        news(0.35, f"writing the dataset card ({_card_estimate(n)})")
        # The card fits simple models per modality (5-fold); the note model dominates and, with no progress of
        # its own, was the ~100 s of silence after the bar in issue 15: hence the reminders.
        with phase("Writing the dataset card", f"how much each modality tells alone: {_card_estimate(n)}",
                   enabled=progress):
            write_card(out)
    return out


def _card_estimate(n: int) -> str:
    """3000 cases on 2 cores: ~17 s idle, ~100 s beside other busy processes; roughly linear in n."""
    return _span(17 * n / 3000)


def _span(idle_s: float) -> str:
    """A duration measured on an idle 2-core machine, and the ~6× that a busy one took (issue 15)."""
    lo = max(5, round(idle_s / 5) * 5)
    return f"about {lo}–{lo * 6} s"


def _params(n: int, seed: int, image_size: int, redundancy: float) -> dict:
    """What cohort.json records; redundancy only when non-zero, so that a default cohort keeps its keys."""
    params = {"generator_version": GENERATOR_VERSION, "n": n, "seed": seed, "image_size": image_size}
    return {**params, "redundancy": redundancy} if redundancy else params


def cohort_params(folder: str | Path) -> dict | None:
    """The parameters a cohort folder was generated with, or None when it is not a (complete) cohort."""
    p = Path(folder) / "cohort.json"
    return json.loads(p.read_text()) if p.exists() else None


def _swap_in(built: Path, folder: Path) -> None:
    """Replace `folder` by `built` with two renames, so that a reader never meets a half-written cohort."""
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    if folder.exists():
        folder.rename(old)
    built.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def ensure_cohort(folder: str | Path, n: int = DEFAULT_N, seed: int = DEFAULT_SEED,
                  image_size: int = DEFAULT_IMAGE_SIZE, progress: bool = True,
                  on_progress: Callable[[float, str], None] | None = None, redundancy: float = 0.0) -> Path:
    """The embedded default, generated once on first use (deterministic, so identical everywhere). It is
    built beside the folder and swapped in, under a lock, so that a running app or test never reads a
    half-written cohort and two processes never build it at once."""
    folder = Path(folder)
    want = _params(n, seed, image_size, float(redundancy))

    def current() -> bool:
        return cohort_params(folder) == want and (folder / "manifest.csv").exists()

    if current():
        return folder
    with locked(folder):
        if not current():
            _build(folder, want, progress, on_progress)
    return folder


def _build(folder: Path, want: dict, progress: bool, on_progress: Callable[[float, str], None] | None) -> None:
    # Only here is anything printed: a cohort already in place costs one small JSON read and says nothing.
    n = want["n"]
    why = "first use only" if cohort_params(folder) is None else "its generator or parameters changed since it was made"
    if progress:
        say(f"Generating the embedded cohort ({n} synthetic cases) in {folder}: {why}; {_cohort_estimate(n)} in all.")
    start = time.monotonic()
    built = folder.with_name(f".{folder.name}.building-{os.getpid()}")
    shutil.rmtree(built, ignore_errors=True)
    generate_cohort(built, n=n, seed=want["seed"], image_size=want["image_size"], progress=progress,
                    on_progress=on_progress, redundancy=want.get("redundancy", 0.0))
    _swap_in(built, folder)
    if progress:
        say(f"The cohort is ready ({time.monotonic() - start:.0f} s).")


def _cohort_estimate(n: int) -> str:
    """The cases (~8 s per 3000 on 2 idle cores, ~20 s busy) and the card together."""
    return _span(25 * n / 3000)


def quick_cohort(on_progress: Callable[[float, str], None] | None = None) -> Path:
    """The 600-case cohort that `--quick` commands train and evaluate on."""
    from core.paths import default_cohort_dir

    return ensure_cohort(default_cohort_dir().with_name("cohort-quick"), n=QUICK_N, on_progress=on_progress)


def redundant_cohort(quick: bool = False, on_progress: Callable[[float, str], None] | None = None) -> Path:
    """The default (or, with `quick`, the 600-case) cohort drawn at redundancy REDUNDANT: modalities that share
    their silences and show findings more reliably, so that a missing one is more predictable from the others.
    Issue 17, regime (d): does restoring missing modalities help more when the modalities share more information?"""
    from core.paths import default_cohort_dir

    name = "cohort-quick-redundant" if quick else "cohort-redundant"
    return ensure_cohort(default_cohort_dir().with_name(name), n=QUICK_N if quick else DEFAULT_N,
                         redundancy=REDUNDANT, on_progress=on_progress)
