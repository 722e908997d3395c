"""Small real-shaped data sets of other shapes than the embedded cohort, and tiny checkpoints trained on them in
seconds, for the tests of a model of your own in the app (issue 26) and of the importers:

- `reports`: one text modality (short radiology reports), three classes, one of them rare;
- `breast_cancer`: scikit-learn's breast cancer table (569 real cases) as three tabular groups;
- `derm`: the Derm7pt release layout (two images, clinical and dermoscopic, and a table), imported by
  `core.data.importers.derm7pt`.

`own_model(name, root)` trains one checkpoint once per test run (a file lock shares it between the parallel
test workers): the quick schedule cut further, so that a model exists, not a good one.
"""

from __future__ import annotations

import fcntl
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

# ---- Derm7pt (the published release layout: meta/meta.csv, split index files, images/) --------------------
DERM_HEADER = ["case_num", "diagnosis", "seven_point_score", "pigment_network", "streaks", "pigmentation",
               "regression_structures", "dots_and_globules", "blue_whitish_veil", "vascular_structures",
               "level_of_diagnostic_difficulty", "elevation", "location", "sex", "management", "clinic", "derm",
               "case_id", "notes"]
DIAGNOSES = {"nevus": ["clark nevus", "blue nevus", "reed or spitz nevus", "congenital nevus", "dermal nevus",
                       "combined nevus", "recurrent nevus", "clark nevus"],
             "melanoma": ["melanoma (in situ)", "melanoma (less than 0.76 mm)", "melanoma (0.76 to 1.5 mm)",
                          "melanoma (more than 1.5 mm)", "melanoma metastasis", "melanoma", "melanoma (in situ)",
                          "melanoma"],
             "basal_cell_carcinoma": ["basal cell carcinoma"] * 8,
             "seborrheic_keratosis": ["seborrheic keratosis"] * 8,
             "miscellaneous": ["dermatofibroma", "lentigo", "melanosis", "miscellaneous", "vascular lesion",
                               "dermatofibroma", "lentigo", "vascular lesion"]}
LOCATIONS = ["abdomen", "back", "head neck", "lower limbs", "upper limbs", "chest", "acral", "buttocks"]


def write_derm7pt(root: Path, per_group: int = 8) -> list[dict]:
    """5 × `per_group` cases (half train, a quarter valid, a quarter test per group; 40 by default) and one with
    a diagnosis outside the release's list. Case 3's clinic image is listed in another letter case than on
    disk; case 5's dermoscopic image is absent; case 6 has no sex recorded. Each group's lesions look alike
    (colour, size), so that a model can learn something from the photographs."""
    (root / "meta").mkdir(parents=True)
    rows, splits = [], {"train": [], "valid": [], "test": []}
    for g, (group, names) in enumerate(DIAGNOSES.items()):
        for j in range(per_group):
            diagnosis, i = names[j % len(names)], len(rows)
            rows.append({"case_num": i + 1, "diagnosis": diagnosis, "seven_point_score": (i * 3) % 8,
                         "pigment_network": ["absent", "typical", "atypical"][i % 3],
                         "streaks": ["absent", "regular", "irregular"][i % 3],
                         "pigmentation": ["absent", "diffuse regular", "localized irregular"][i % 3],
                         "regression_structures": ["absent", "blue areas", "combinations"][i % 3],
                         "dots_and_globules": ["absent", "regular", "irregular"][i % 3],
                         "blue_whitish_veil": ["absent", "present"][i % 2],
                         "vascular_structures": ["absent", "arborizing", "dotted", "linear irregular"][i % 4],
                         "level_of_diagnostic_difficulty": ["low", "medium", "high"][i % 3],
                         "elevation": ["flat", "palpable", "nodular"][i % 3],
                         "location": LOCATIONS[i % len(LOCATIONS)], "sex": "" if i == 6 else ["female", "male"][i % 2],
                         "management": ["excision", "clinical follow up", "no further examination"][i % 3],
                         "clinic": f"NEL/NEL{100 + 2 * i:03d}.JPG" if i != 3 else f"NEL/nel{100 + 2 * i:03d}.jpg",
                         "derm": f"NEL/Nel{101 + 2 * i:03d}.jpg", "case_id": "", "notes": ""})
            splits["train" if j < per_group // 2 else "valid" if j < 3 * per_group // 4 else "test"].append(i)
    rows.append({**rows[0], "case_num": len(rows) + 1, "diagnosis": "mystery lesion",
                 "clinic": "NEL/NEL900.JPG", "derm": "NEL/Nel901.jpg"})
    splits["train"].append(len(rows) - 1)
    pd.DataFrame(rows, columns=DERM_HEADER).to_csv(root / "meta" / "meta.csv", index=False)
    for name, idx in splits.items():
        pd.DataFrame({"indexes": idx}).to_csv(root / "meta" / f"{name}_indexes.csv", index=False)
    group_of = {d: g for g, names in enumerate(DIAGNOSES.values()) for d in names}
    for i, r in enumerate(rows):
        clinic = r["clinic"] if i != 3 else r["clinic"].upper()
        look = group_of.get(r["diagnosis"], 0)
        _rgb(root / "images" / clinic, i, look)
        if i != 5:
            _rgb(root / "images" / r["derm"], 100 + i, look)
    return rows


# per diagnosis group, in DIAGNOSES' order: the lesion's colour (RGB) and its size (a fraction of the picture)
LESIONS = [((125, 80, 55), 0.18), ((45, 30, 25), 0.3), ((215, 140, 150), 0.22), ((175, 135, 95), 0.34),
           ((185, 55, 60), 0.12)]


def _rgb(path: Path, seed: int, look: int = 0) -> None:
    """A photograph-like picture: skin-toned background, a lesion of its group's colour and size (`look`) with a
    shape and position drawn from `seed`, and sensor noise (JPEG, as the release ships)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    side = 96
    yy, xx = np.mgrid[:side, :side] / side - 0.5
    skin = np.array([224, 180, 150]) + rng.normal(0, 8, 3)
    colour, size = LESIONS[look % len(LESIONS)]
    lesion = np.array(colour) * rng.uniform(0.85, 1.1, 3)
    a, b = size * rng.uniform(0.75, 1.25, 2)
    inside = (((xx - rng.uniform(-0.1, 0.1)) / a) ** 2 + ((yy - rng.uniform(-0.1, 0.1)) / b) ** 2) < 1
    img = np.where(inside[..., None], lesion, skin) + rng.normal(0, 6, (side, side, 3))
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, format="JPEG")


# ---- one text modality -------------------------------------------------------------------------------------
REPORT_FINDINGS = {
    "normal": ["The lungs are clear.", "No focal consolidation, effusion or pneumothorax.", "Heart size is normal.",
               "Normal mediastinal contours.", "No acute cardiopulmonary process."],
    "pneumonia": ["Patchy consolidation in the right lower lobe.", "Air bronchograms in the left lower lobe.",
                  "Ill-defined opacity in the lingula, likely infection.", "Febrile with productive cough."],
    "pneumothorax": ["Right apical pneumothorax.", "Visible pleural line without lung markings beyond it.",
                     "Deep sulcus sign on the left."],
}


def write_reports(root: Path, n: int = 150) -> Path:
    """`n` short reports, one modality `report`; pneumothorax is rare (1 in 10) and declared so."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "notes").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        label = "pneumothorax" if i % 10 == 9 else ("pneumonia" if i % 2 else "normal")
        picked = rng.choice(REPORT_FINDINGS[label], 2, replace=False)
        (root / "notes" / f"{i}.txt").write_text(f"INDICATION: cough. FINDINGS: {' '.join(picked)}", encoding="utf-8")
        rows.append({"case_id": f"r{i}", "label": label, "note_path": f"notes/{i}.txt"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    (root / "spec.yaml").write_text(yaml.safe_dump({
        "name": "chest-reports", "label": "label", "case_id": "case_id",
        "classes": ["normal", "pneumonia", "pneumothorax"], "rare_classes": ["pneumothorax"],
        "modalities": [{"name": "report", "type": "text", "column": "note_path"}]}))
    return root


# ---- three tabular groups ----------------------------------------------------------------------------------
def breast_cancer_frame() -> tuple[pd.DataFrame, list[str]]:
    """scikit-learn's breast cancer set (569 real cases) as a manifest: its 30 measurements (names without spaces),
    `label` (benign or malignant) and `case_id`; and the measurement columns."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    df = data.frame.copy()
    cols = [c.replace(" ", "_") for c in data.feature_names]
    df.columns = cols + ["target"]
    df["label"] = np.where(df["target"] == 1, "benign", "malignant")
    df["case_id"] = [f"bc{i}" for i in range(len(df))]
    return df.drop(columns="target"), cols


def write_breast_cancer(root: Path) -> Path:
    """scikit-learn's breast cancer set as three inline tabular groups: mean, error and worst."""
    df, cols = breast_cancer_frame()
    root.mkdir(parents=True, exist_ok=True)
    df.to_csv(root / "manifest.csv", index=False)
    groups = {"mean": cols[:10], "error": cols[10:20], "worst": cols[20:]}
    (root / "spec.yaml").write_text(yaml.safe_dump({
        "name": "breast-cancer", "label": "label", "case_id": "case_id", "classes": ["benign", "malignant"],
        "modalities": [{"name": g, "type": "tabular", "columns": c} for g, c in groups.items()],
        "labs": [{"name": c, "label": c.replace("_", " "), "unit": "", "plausible": [0, 1e5]} for c in cols]}))
    return root


def write_derm(root: Path) -> Path:
    """The Derm7pt release layout, imported: images `clinic` and `derm`, table `patient`, five classes."""
    from core.data.importers.derm7pt import import_derm7pt

    write_derm7pt(root / "release", per_group=16)
    import_derm7pt(root / "release", root / "data")
    return root / "data"


WRITERS = {"reports": write_reports, "breast_cancer": write_breast_cancer, "derm": write_derm}
# the quick schedule cut to a model that exists in seconds (the tests check the app, not the model's accuracy)
TINY = {"model": {"d_h": 32, "lab_hidden": 32, "head_hidden": 32, "d_k": 16},
        "diffusion": {"samples": 4, "sample_steps": 2, "denoiser_width": 32, "denoiser_depth": 1, "denoiser_heads": 2,
                      "train_sample_steps": 2},
        "training": {"epochs": 3, "diffusion_epochs": 3, "finetune_epochs": 1, "patience": 2}}


def tiny_config():
    from core.model.config import Config
    from core.paths import CONFIGS

    config = Config.load(CONFIGS / "default.yaml")
    for section, changes in TINY.items():
        config = config.override(section, **changes)
    return config


def own_model(name: str, root: Path) -> tuple[Path, Path]:
    """(checkpoint folder, data folder) of data set `name` under `root` (shared by the test workers of one run):
    written and trained by the first worker that asks, under a file lock."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            checkpoint = root / name / "checkpoint"
            data = root / name / ("data" if name == "derm" else "")
            if not (checkpoint / "meta.json").exists():
                from core.training import train

                written = WRITERS[name](root / name)
                assert written.resolve() == data.resolve(), (written, data)
                train(data, tiny_config(), checkpoint, device="cpu", progress=False, command=f"tests: {name}")
            return checkpoint, data
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
