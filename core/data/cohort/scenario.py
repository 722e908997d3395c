"""The clinical scenario of the embedded cohort: acute chest presentations in an emergency department.

Everything the generator samples from is declared here, as data: the diagnoses and their prevalence,
the lab catalogue, what each diagnosis does to the labs, the image and the note, and who is likely to
miss which test. The numbers are plausible, not calibrated to any registry; their purpose is a cohort
whose evidence is spread over modalities the way real evidence is (see DATASET_CARD.md it writes).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.data.spec import LabSpec

# ---- diagnoses -------------------------------------------------------------------------------
CLASSES: tuple[str, ...] = ("no_acute_disease", "pneumonia", "heart_failure", "pulmonary_embolism",
                            "pneumothorax", "tuberculosis", "aortic_dissection")
PREVALENCE: dict[str, float] = {"no_acute_disease": 0.36, "pneumonia": 0.24, "heart_failure": 0.17,
                                "pulmonary_embolism": 0.10, "pneumothorax": 0.08, "tuberculosis": 0.03,
                                "aortic_dissection": 0.02}
RARE_CLASSES: tuple[str, ...] = ("tuberculosis", "aortic_dissection")
# age (mean, sd) and probability male, per diagnosis
DEMOGRAPHY: dict[str, tuple[float, float, float]] = {
    "no_acute_disease": (46, 16, 0.5), "pneumonia": (62, 18, 0.52), "heart_failure": (76, 9, 0.5),
    "pulmonary_embolism": (58, 15, 0.48), "pneumothorax": (29, 9, 0.8), "tuberculosis": (41, 14, 0.62),
    "aortic_dissection": (64, 11, 0.68)}

# ---- labs (and the one vital sign that travels with them) -------------------------------------
LAB_CATALOGUE: tuple[LabSpec, ...] = (
    LabSpec("wbc", "White blood cells", "10^9/L", (4.0, 11.0), (0.0, 500.0), ("leukocytes", "wbc count", "white cell count"),
            {"/uL": (0.001, 0.0), "10^3/uL": (1.0, 0.0), "K/uL": (1.0, 0.0), "G/L": (1.0, 0.0)}, log=True),
    LabSpec("crp", "C-reactive protein", "mg/L", (0.0, 5.0), (0.0, 1000.0), ("c reactive protein", "hs-crp"),
            {"mg/dL": (10.0, 0.0)}, log=True),
    LabSpec("procalcitonin", "Procalcitonin", "ng/mL", (0.0, 0.1), (0.0, 1000.0), ("pct",), {"ug/L": (1.0, 0.0)}, log=True),
    LabSpec("bnp", "B-type natriuretic peptide", "pg/mL", (0.0, 100.0), (0.0, 50000.0), ("brain natriuretic peptide",),
            {"ng/L": (1.0, 0.0), "pmol/L": (3.46, 0.0)}, log=True),
    LabSpec("troponin", "High-sensitivity troponin T", "ng/L", (0.0, 14.0), (0.0, 100000.0), ("hs-tnt", "troponin t", "tnt"),
            {"ng/mL": (1000.0, 0.0), "ug/L": (1000.0, 0.0)}, log=True),
    LabSpec("d_dimer", "D-dimer", "mg/L FEU", (0.0, 0.5), (0.0, 100.0), ("ddimer", "d dimer"),
            {"ug/mL FEU": (1.0, 0.0), "ng/mL FEU": (0.001, 0.0), "ug/L FEU": (0.001, 0.0), "mg/L": (1.0, 0.0)}, log=True),
    LabSpec("hemoglobin", "Haemoglobin", "g/dL", (12.0, 17.5), (1.0, 25.0), ("hb", "hgb", "haemoglobin"),
            {"g/L": (0.1, 0.0), "mmol/L": (1.611, 0.0)}),
    LabSpec("sodium", "Sodium", "mmol/L", (135.0, 145.0), (90.0, 200.0), ("na",), {"mEq/L": (1.0, 0.0)}),
    LabSpec("potassium", "Potassium", "mmol/L", (3.5, 5.0), (1.0, 10.0), ("k",), {"mEq/L": (1.0, 0.0)}),
    LabSpec("creatinine", "Creatinine", "mg/dL", (0.6, 1.2), (0.05, 30.0), ("creat", "cr"),
            {"umol/L": (1 / 88.4, 0.0)}, log=True),
    LabSpec("glucose", "Glucose", "mg/dL", (70.0, 140.0), (10.0, 2000.0), ("glu", "blood glucose"),
            {"mmol/L": (18.016, 0.0)}, log=True),
    LabSpec("lactate", "Lactate", "mmol/L", (0.5, 2.0), (0.1, 30.0), ("lactic acid",), {"mg/dL": (1 / 9.008, 0.0)}, log=True),
    LabSpec("esr", "Erythrocyte sedimentation rate", "mm/h", (0.0, 20.0), (0.0, 200.0), ("sed rate",), {}, log=True),
    LabSpec("spo2", "Oxygen saturation (room air)", "%", (95.0, 100.0), (40.0, 100.0), ("sao2", "o2 sat", "oxygen saturation"), {}),
)


@dataclass(frozen=True)
class LabModel:
    centre: float  # median (log labs) or mean
    spread: float  # sd of log (log labs) or sd
    log: bool


LAB_NORMAL: dict[str, LabModel] = {
    "wbc": LabModel(7.2, 0.22, True), "crp": LabModel(2.5, 0.8, True), "procalcitonin": LabModel(0.05, 0.5, True),
    "bnp": LabModel(40.0, 0.7, True), "troponin": LabModel(6.0, 0.5, True), "d_dimer": LabModel(0.3, 0.5, True),
    "hemoglobin": LabModel(13.8, 1.3, False), "sodium": LabModel(139.0, 2.5, False),
    "potassium": LabModel(4.2, 0.35, False), "creatinine": LabModel(0.9, 0.2, True),
    "glucose": LabModel(105.0, 0.18, True), "lactate": LabModel(1.1, 0.3, True), "esr": LabModel(10.0, 0.6, True),
    "spo2": LabModel(97.5, 1.2, False)}

# What each diagnosis does to a lab at full expression: a factor for log labs, a shift otherwise.
LAB_EFFECTS: dict[str, dict[str, float]] = {
    "no_acute_disease": {},
    "pneumonia": {"wbc": 1.8, "crp": 30.0, "procalcitonin": 15.0, "spo2": -4.0, "sodium": -3.0, "lactate": 1.4, "esr": 3.0},
    "heart_failure": {"bnp": 20.0, "creatinine": 1.4, "sodium": -4.0, "troponin": 2.5, "spo2": -3.0},
    "pulmonary_embolism": {"d_dimer": 8.0, "troponin": 3.0, "spo2": -5.0, "bnp": 2.5, "crp": 3.0},
    "pneumothorax": {"spo2": -2.5},
    "tuberculosis": {"esr": 6.0, "hemoglobin": -2.5, "crp": 8.0, "sodium": -2.0},
    "aortic_dissection": {"d_dimer": 12.0, "lactate": 2.2, "troponin": 1.8, "crp": 4.0, "hemoglobin": -1.0},
}
# Effects smaller than this (|log factor| or shift in sd units) are not counted as signal in the truth.
SIGNAL_LABS: dict[str, tuple[str, ...]] = {c: tuple(k for k, v in eff.items() if k != "spo2" or abs(v) >= 4)
                                           for c, eff in LAB_EFFECTS.items()}
# Probability a lab is not measured (ordered less often unless the picture suggests it).
LAB_MISSING: dict[str, float] = {"procalcitonin": 0.55, "esr": 0.65, "bnp": 0.35, "lactate": 0.45,
                                 "troponin": 0.15, "d_dimer": 0.40}
LAB_ORDERED_WHEN: dict[str, tuple[str, ...]] = {  # diagnoses that make a clinician order the test
    "procalcitonin": ("pneumonia",), "bnp": ("heart_failure",), "d_dimer": ("pulmonary_embolism", "aortic_dissection"),
    "lactate": ("aortic_dissection", "pneumonia"), "esr": ("tuberculosis",)}
# Alternative units a lab report may use (the generator writes some files in them).
ALT_UNIT_CHOICES: dict[str, str] = {"glucose": "mmol/L", "creatinine": "umol/L", "hemoglobin": "g/L", "crp": "mg/dL",
                                    "d_dimer": "ng/mL FEU", "wbc": "/uL", "troponin": "ng/mL"}

# ---- image findings: (probability at full expression) per diagnosis ------------------------------
IMAGE_FINDINGS: tuple[str, ...] = ("consolidation", "cavity", "pleural_effusion", "cardiomegaly", "pulmonary_edema",
                                   "pneumothorax", "widened_mediastinum", "wedge_opacity")
IMAGE_EFFECTS: dict[str, dict[str, float]] = {
    "no_acute_disease": {"cardiomegaly": 0.04},
    "pneumonia": {"consolidation": 0.85, "pleural_effusion": 0.2},
    "heart_failure": {"cardiomegaly": 0.8, "pleural_effusion": 0.55, "pulmonary_edema": 0.6},
    "pulmonary_embolism": {"wedge_opacity": 0.12, "pleural_effusion": 0.12},
    "pneumothorax": {"pneumothorax": 0.9},
    "tuberculosis": {"cavity": 0.7, "consolidation": 0.35, "pleural_effusion": 0.1},
    "aortic_dissection": {"widened_mediastinum": 0.75, "pleural_effusion": 0.15},
}

# ---- note findings: probability per diagnosis, and which diagnoses each finding argues for ----------
NOTE_EFFECTS: dict[str, dict[str, float]] = {
    "no_acute_disease": {"chest_wall_pain": 0.45, "anxiety": 0.3, "dyspnea": 0.2},
    "pneumonia": {"fever": 0.75, "productive_cough": 0.7, "crackles": 0.55, "dyspnea": 0.6, "pleuritic_pain": 0.25,
                  "tachycardia": 0.3},
    "heart_failure": {"orthopnea": 0.6, "leg_edema": 0.65, "jvd": 0.45, "crackles": 0.4, "dyspnea": 0.8},
    "pulmonary_embolism": {"pleuritic_pain": 0.55, "sudden_onset": 0.45, "calf_swelling": 0.35, "immobilization": 0.45,
                           "tachycardia": 0.55, "dyspnea": 0.7, "hemoptysis": 0.1},
    "pneumothorax": {"sudden_onset": 0.7, "pleuritic_pain": 0.6, "decreased_breath_sounds": 0.55, "tall_thin": 0.4,
                     "dyspnea": 0.6},
    "tuberculosis": {"night_sweats": 0.6, "weight_loss": 0.55, "hemoptysis": 0.4, "tb_exposure": 0.45,
                     "productive_cough": 0.5, "fever": 0.35},
    "aortic_dissection": {"tearing_pain": 0.65, "bp_differential": 0.4, "sudden_onset": 0.55, "hypertension_hx": 0.7},
}
# Findings that are decisive for a diagnosis (their spans are the note's ground-truth evidence).
NOTE_DECISIVE: dict[str, tuple[str, ...]] = {
    "no_acute_disease": ("chest_wall_pain", "anxiety"),
    "pneumonia": ("fever", "productive_cough", "crackles"),
    "heart_failure": ("orthopnea", "leg_edema", "jvd", "crackles"),
    "pulmonary_embolism": ("pleuritic_pain", "calf_swelling", "immobilization", "sudden_onset"),
    "pneumothorax": ("sudden_onset", "decreased_breath_sounds", "tall_thin", "pleuritic_pain"),
    "tuberculosis": ("night_sweats", "weight_loss", "hemoptysis", "tb_exposure"),
    "aortic_dissection": ("tearing_pain", "bp_differential"),
}

# Atypical presentations: the chance that a modality shows nothing of the diagnosis in a given case.
# Independent across modalities, so that combining them recovers what any one of them misses (in the default
# cohort: with `redundancy` > 0 they are shared, see sample._shared_silence).
SILENT: dict[str, float] = {"image": 0.15, "note": 0.3, "labs": 0.25}

# ---- missingness ----------------------------------------------------------------------------------
# Baseline probability that a modality is absent; the generator shifts it by severity, age and diagnosis.
MISSING_BASE: dict[str, float] = {"image": 0.30, "note": 0.24, "labs": 0.27}
