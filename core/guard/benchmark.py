"""How well the guard separates the training domain from everything else (`python -m core guard`).

In-domain: the share of the test split's inputs flagged (false alarms). Out of domain, per category, the
share refused (by the reader or the DICOM domain check) and the share flagged by the out-of-distribution
score alone (every input is scored, also those the domain check refuses, so both layers are measured):
- pydicom's bundled test images (CT, MR, ultrasound, nuclear medicine, secondary captures, segmentations);
- scikit-learn's two sample photographs and random crops of them;
- generated noise and synthetic patterns;
- notes of other specialties and non-medical texts (assets/ood/notes, written for the project);
- lab tables with implausible values: random values across each lab's plausible range (an impossible
  combination), and a real panel with one value beyond its plausible range (a unit error);
- a stress test reported apart: a real panel with one lab at the edge of its plausible range (rare, possible).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from core.data.dataset import Dataset
from core.data.readers.labs import labs_from_mapping
from core.errors import InputError
from core.features import dataset_features
from core.inference import Predictor
from core.paths import ASSETS

OOD_NOTES = ASSETS / "ood" / "notes"


def _png(a: np.ndarray) -> bytes:
    b = io.BytesIO()
    Image.fromarray(a).save(b, "PNG")
    return b.getvalue()


def pydicom_images() -> list[tuple[str, bytes]]:
    import warnings

    from pydicom.data import get_testdata_files

    import core.data.readers.dicom  # noqa: F401 - quiets pydicom's logger before the listing logs

    with warnings.catch_warnings():  # "download failures": the files not bundled with the wheel (no network)
        warnings.simplefilter("ignore")
        files = get_testdata_files("*.dcm")
    return [(Path(f).name, Path(f).read_bytes()) for f in sorted(files)]


def photographs(crops: int = 12, seed: int = 0) -> list[tuple[str, bytes]]:
    from sklearn.datasets import load_sample_image

    rng = np.random.default_rng(seed)
    out = []
    for name in ("china.jpg", "flower.jpg"):
        img = load_sample_image(name)
        out.append((name, _png(img)))
        h, w = img.shape[:2]
        for i in range(crops):
            side = int(rng.integers(96, min(h, w)))
            y, x = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
            crop = img[y:y + side, x:x + side]
            out.append((f"{name}-crop{i}", _png(crop if i % 2 else crop.mean(-1).astype(np.uint8))))
    return out


def noise_images(n: int = 24, seed: int = 0) -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        s = int(rng.choice([128, 256, 512]))
        kind = ("uniform", "gaussian", "salt_pepper", "constant", "gradient", "checkerboard")[i % 6]
        if kind == "uniform":
            a = rng.random((s, s)) * 255
        elif kind == "gaussian":
            a = np.clip(rng.normal(128, 40, (s, s)), 0, 255)
        elif kind == "salt_pepper":
            a = (rng.random((s, s)) > 0.5) * 255.0
        elif kind == "constant":
            a = np.full((s, s), float(rng.integers(0, 256)))
        elif kind == "gradient":
            a = np.tile(np.linspace(0, 255, s), (s, 1))
            a = a.T if i % 2 else a
        else:
            k = int(rng.integers(4, 32))
            a = ((np.add.outer(np.arange(s) // k, np.arange(s) // k) % 2) * 255.0)
        out.append((f"{kind}-{i}", _png(a.astype(np.uint8))))
    return out


def ood_notes(category: str) -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in sorted((OOD_NOTES / category).glob("*.txt"))]


def implausible_labs(predictor: Predictor, name: str, n: int = 40, seed: int = 0) -> list[tuple[str, object]]:
    """Lab panels no patient has: every lab drawn at random across its plausible range (log-uniform for
    skewed markers), so that each value may be possible but their combination is not."""
    rng = np.random.default_rng(seed)
    catalogue = predictor.lab_catalogue(name)
    out: list[tuple[str, object]] = []
    for i in range(n):
        values = {}
        for lab in catalogue:
            lo, hi = lab.plausible[0], min(lab.plausible[1], lab.plausible[0] + 1e5)
            values[lab.name] = float(np.expm1(rng.uniform(np.log1p(lo), np.log1p(hi)))) if lab.log else float(rng.uniform(lo, hi))
        out.append((f"random-{i}", labs_from_mapping(values, catalogue)))
    return out


def _real_panels(ds: Dataset, name: str, n: int, rng: np.random.Generator) -> list[dict[str, float]]:
    rows = [int(r) for r in ds.indices("test") if ds.is_present(int(r), name)]
    return [{k: v.value for k, v in ds.load(rows[int(rng.integers(len(rows)))]).inputs[name].values.items()}
            for _ in range(n)]


def unit_errors(predictor: Predictor, ds: Dataset, name: str, n: int = 40, seed: int = 0) -> list[tuple[str, object]]:
    """A real test panel, as a CSV file, with one value beyond its plausible range (a wrong unit or a typo)."""
    rng = np.random.default_rng(seed)
    catalogue = predictor.lab_catalogue(name)
    out: list[tuple[str, object]] = []
    for i, values in enumerate(_real_panels(ds, name, n, rng)):
        lab = catalogue[int(rng.integers(len(catalogue)))]
        values[lab.name] = lab.plausible[1] * 3 + 1
        csv = "name,value,unit\n" + "".join(f"{k},{v:g},{next(c.unit for c in catalogue if c.name == k)}\n"
                                           for k, v in values.items())
        out.append((f"unit-{lab.name}-{i}", csv.encode()))
    return out


def edge_labs(predictor: Predictor, ds: Dataset, name: str, n: int = 40, seed: int = 0) -> list[tuple[str, object]]:
    """A stress test, not a target category: a real test panel with one lab moved to the far edge of its
    plausible range (90 % of the upper bound, or near the lower bound for labs whose reference range sits
    well above it: sodium, haemoglobin, SpO2). Rare but possible values, so not all are out of domain."""
    rng = np.random.default_rng(seed)
    catalogue = predictor.lab_catalogue(name)
    low_end = [lab for lab in catalogue if lab.ref[0] is not None and lab.plausible[0] < lab.ref[0]]
    out: list[tuple[str, object]] = []
    for i, values in enumerate(_real_panels(ds, name, n, rng)):
        if i % 2 and low_end:
            lab = low_end[int(rng.integers(len(low_end)))]
            values[lab.name] = lab.plausible[0] + 0.05 * (lab.ref[0] - lab.plausible[0])
        else:
            lab = catalogue[int(rng.integers(len(catalogue)))]
            values[lab.name] = 0.9 * lab.plausible[1]
        out.append((f"edge-{lab.name}-{i}", labs_from_mapping(values, catalogue)))
    return out


def _score(predictor: Predictor, name: str, items: list[tuple[str, object]]) -> dict:
    """Read each item as modality `name`; count refusals (reader, domain check) and OOD flags."""
    assert predictor.guard is not None
    cases, refused = [], 0
    for label, src in items:
        try:
            cases.append(predictor.case(case_id=label, **{name: src}))
        except InputError:
            refused += 1
    domain = np.array([bool(predictor.domain_mismatches(c)) for c in cases], bool)
    scores = predictor.guard.scores(predictor.features(cases), range(len(cases)))[name] if cases else np.zeros(0)
    flagged = scores > predictor.guard.thresholds[name]
    caught = refused + int(np.sum(domain | flagged))
    n = len(items)
    return {"n": n, "read": len(cases), "refused_by_reader": refused, "refused_by_domain_check": int(domain.sum()),
            "flagged_by_ood": int(flagged.sum()), "ood_flag_rate": float(flagged.mean()) if cases else float("nan"),
            "caught": caught, "caught_rate": caught / n if n else float("nan"),
            "median_score": float(np.median(scores)) if cases else float("nan"),
            "missed": [c.case_id for c, d, f in zip(cases, domain, flagged) if not (d or f)]}


def guard_benchmark(predictor: Predictor, ds: Dataset, progress: bool = False) -> dict:
    if predictor.guard is None:
        from core.errors import CheckpointError
        raise CheckpointError("this checkpoint has no out-of-distribution statistics; fit them with "
                              "`python -m core guard --fit` (or retrain)")
    guard = predictor.guard
    table = dataset_features(ds, predictor.model.config.model, predictor.device, progress=progress)
    report: dict = {"thresholds": guard.thresholds, "false_alarm_target": 0.02,
                    "test_false_alarms": guard.flag_rates(table, ds.indices("test")),
                    "val_flagged": guard.val_flagged, "categories": {}}
    kinds = dict(predictor.modalities)
    image = next((n for n, k in kinds.items() if k == "image"), None)
    text = next((n for n, k in kinds.items() if k == "text"), None)
    labs = next((n for n, k in kinds.items() if k == "tabular"), None)
    cats = report["categories"]
    if image:
        cats["pydicom test images (CT, MR, US, NM, SC, SEG…)"] = _score(predictor, image, pydicom_images())
        cats["photographs (scikit-learn samples and crops)"] = _score(predictor, image, photographs())
        cats["noise and synthetic patterns"] = _score(predictor, image, noise_images())
    if text:
        cats["notes of other specialties"] = _score(predictor, text, ood_notes("other_specialty"))
        cats["non-medical texts"] = _score(predictor, text, ood_notes("non_medical"))
    if labs:
        cats["lab panels with implausible combinations (random across plausible ranges)"] = \
            _score(predictor, labs, implausible_labs(predictor, labs))
        cats["lab tables with a value beyond its plausible range (unit error)"] = \
            _score(predictor, labs, unit_errors(predictor, ds, labs))
        report["stress"] = {"real lab panel with one lab at the edge of its plausible range":
                            _score(predictor, labs, edge_labs(predictor, ds, labs))}
    return report


def markdown(report: dict) -> str:
    lines = ["| modality | threshold | flagged on validation | false alarms on the test split (target ≤ 2 %) |",
             "|---|---|---|---|"]
    for m, t in report["thresholds"].items():
        lines.append(f"| {m} | {t:.2f} | {report['val_flagged'].get(m, float('nan')):.1%} | "
                     f"{report['test_false_alarms'].get(m, float('nan')):.1%} |")
    lines += ["", "| inputs not from the cohort | n | refused by the reader | refused by the DICOM domain check | "
              "flagged by the OOD score (of those read) | caught in all (target ≥ 99 %) |", "|---|---|---|---|---|---|"]
    for c, r in [*report["categories"].items(), *[(f"stress test: {k}", v) for k, v in report.get("stress", {}).items()]]:
        ood = f"{r['flagged_by_ood']}/{r['read']} ({r['ood_flag_rate']:.0%})" if r["read"] else "– (none read)"
        lines.append(f"| {c} | {r['n']} | {r['refused_by_reader']} | {r['refused_by_domain_check']} | {ood} | "
                     f"{r['caught_rate']:.1%} |")
    return "\n".join(lines)
