"""Sample one case of the embedded cohort: a patient, a diagnosis, and what each modality shows of it."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from core.data.cohort import scenario as sc
from core.data.cohort.notes import Mention, write_note
from core.data.cohort.radiograph import Acquisition, draw_radiograph

# Findings that turn up in any diagnosis now and then (non-specific noise), with their base rates.
BACKGROUND_NOTE = {"dyspnea": 0.15, "tachycardia": 0.12, "fever": 0.08, "pleuritic_pain": 0.08, "anxiety": 0.08,
                   "chest_wall_pain": 0.08, "leg_edema": 0.06, "productive_cough": 0.1, "hemoptysis": 0.02,
                   "sudden_onset": 0.08, "crackles": 0.05, "orthopnea": 0.03, "weight_loss": 0.03}
MODALITIES = ("image", "note", "labs")
# Redundancy draws come from their own stream, so that at redundancy 0 the main stream (and every case) is exactly
# what it was, and at redundancy > 0 demography, missingness (but for the rare case whose labs all go unmeasured)
# and the independent silences stay those of the default.
_TIE_STREAM = 17


@dataclass
class SampledCase:
    case_id: str
    patient_id: str
    diagnosis: str
    severity: float
    age: int
    male: bool
    comorbidities: list[str]
    present: dict[str, bool]
    image: np.ndarray | None = None
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    image_without_findings: np.ndarray | None = None  # the same film rendered without its findings
    image_findings: dict[str, dict] = field(default_factory=dict)
    note: str | None = None
    mentions: list[Mention] = field(default_factory=list)
    note_findings: dict[str, dict] = field(default_factory=dict)
    labs: list[tuple[str, float, str]] = field(default_factory=list)  # (name as written, value, unit)
    signal_labs: list[str] = field(default_factory=list)
    portable: bool = False
    silent: dict[str, bool] = field(default_factory=dict)  # modalities that show nothing of the diagnosis (not written)


def _firmer(q: float, redundancy: float, cap: float) -> float:
    """A finding's probability under redundancy: up to 1.5x as likely at redundancy 1, capped. Multiplicative, not
    a pull toward the cap, so that incidental findings (cardiomegaly in a healthy patient, 4%) stay rare."""
    return min(cap, q * (1 + 0.5 * redundancy)) if redundancy > 0 else q


def _comorbidities(rng: np.random.Generator, dx: str, age: int) -> list[str]:
    p = {"hypertension": 0.12 + 0.006 * max(age - 40, 0) + (0.3 if dx == "heart_failure" else 0),
         "diabetes": 0.07 + 0.003 * max(age - 40, 0), "copd": 0.05 + (0.08 if dx in ("pneumonia", "pneumothorax") else 0),
         "ckd": 0.04 + (0.2 if dx == "heart_failure" else 0) + 0.002 * max(age - 60, 0),
         "smoker": 0.2 + (0.3 if dx == "pneumothorax" else 0), "anemia": 0.06}
    return [k for k, v in p.items() if rng.random() < v]


def _labs(rng: np.random.Generator, dx: str, s: float, age: int, comorb: list[str],
          redundancy: float = 0.0) -> tuple[dict[str, float], list[str]]:
    values: dict[str, float] = {}
    manifested: list[str] = []
    for lab in sc.LAB_CATALOGUE:
        m = sc.LAB_NORMAL[lab.name]
        log_v = np.log(m.centre) + rng.normal(0, m.spread) if m.log else None
        lin_v = None if m.log else m.centre + rng.normal(0, m.spread)
        # confounders that are not the diagnosis
        conf = {("creatinine", "ckd"): 1.8, ("bnp", "ckd"): 2.0, ("glucose", "diabetes"): 1.6, ("wbc", "smoker"): 1.1}
        for (name, c), f in conf.items():
            if name == lab.name and c in comorb:
                log_v += np.log(f)
        if lab.name == "bnp":
            log_v += 0.012 * max(age - 50, 0)
        if lab.name == "spo2" and "copd" in comorb:
            lin_v -= 2.0
        if lab.name == "hemoglobin" and "anemia" in comorb:
            lin_v -= 2.2
        effect = sc.LAB_EFFECTS[dx].get(lab.name)
        if effect is not None and rng.random() < _firmer(0.92, redundancy, 0.97):
            intensity = (0.5 + 0.7 * s) * float(np.clip(rng.normal(1, 0.25), 0.3, 1.6))
            if m.log:
                log_v += np.log(effect) * intensity
            else:
                lin_v += effect * intensity
            manifested.append(lab.name)
        v = float(np.exp(log_v)) if m.log else float(lin_v)
        lo, hi = lab.plausible
        values[lab.name] = float(np.clip(v, lo, min(hi, 100.0) if lab.name == "spo2" else hi))
    return values, manifested


def _missing(rng: np.random.Generator, dx: str, s: float, age: int) -> dict[str, bool]:
    p_img = sc.MISSING_BASE["image"] + (0.1 if dx == "no_acute_disease" else 0) - 0.25 * s - (0.1 if dx == "pneumothorax" else 0)
    p_lab = sc.MISSING_BASE["labs"] + (0.12 if age < 40 else 0) - 0.15 * s
    p_note = sc.MISSING_BASE["note"] + (0.1 if rng.random() < 0.3 else 0)  # busy night shifts
    present = {"image": rng.random() >= p_img, "note": rng.random() >= p_note, "labs": rng.random() >= p_lab}
    if not any(present.values()):
        present["note"] = True
    return present


def _shared_silence(seed: int, index: int, silent: dict[str, bool], redundancy: float) -> dict[str, bool]:
    """With probability `redundancy` the case is atypical in all modalities or in none (at the mean SILENT rate);
    otherwise each modality keeps its own independent draw, as in the default cohort."""
    if redundancy <= 0:
        return silent
    tie = np.random.default_rng([seed, index, _TIE_STREAM])
    if tie.random() >= redundancy:
        return silent
    shared = bool(tie.random() < float(np.mean([sc.SILENT[m] for m in MODALITIES])))
    return dict.fromkeys(MODALITIES, shared)


def _patient(seed: int, first: int, first_dx: str) -> tuple[int, bool, list[str]]:
    """Age, sex and comorbidities of the patient whose first visit is case `first` (the first draws of its case)."""
    rng = np.random.default_rng([seed, first])
    mean_age, sd_age, p_male = sc.DEMOGRAPHY[first_dx]
    age = int(np.clip(rng.normal(mean_age, sd_age), 18, 97))
    male = bool(rng.random() < p_male)
    rng.beta(2, 5) if first_dx == "no_acute_disease" else rng.beta(2.2, 2.0)
    return age, male, _comorbidities(rng, first_dx, age)


def sample_case(seed: int, index: int, dx: str, image_size: int, redundancy: float = 0.0, first: int | None = None,
                first_dx: str | None = None) -> SampledCase:
    """Everything about case `index`, deterministic in (seed, index, dx, redundancy, first visit). `redundancy` in
    [0, 1] makes the modalities tell more of the same thing (issue 17, regime d): silences shared across modalities
    with that probability, and every diagnostic finding up to 1.5x as likely. At 0 the draws are the default
    cohort's. `first`, `first_dx`: the case and diagnosis of this patient's first visit, when this is a later one:
    the patient is then as old (a year or two older), of the same sex, and keeps the comorbidities."""
    if not 0.0 <= redundancy <= 1.0:
        raise ValueError(f"redundancy must lie in [0, 1], not {redundancy}")
    rng = np.random.default_rng([seed, index])

    def pick(seq):
        return seq[int(rng.integers(0, len(seq)))]

    mean_age, sd_age, p_male = sc.DEMOGRAPHY[dx]
    age = int(np.clip(rng.normal(mean_age, sd_age), 18, 97))
    male = bool(rng.random() < p_male)
    s = float(rng.beta(2, 5) if dx == "no_acute_disease" else rng.beta(2.2, 2.0))
    comorb = _comorbidities(rng, dx, age)
    first = index if first is None else first
    if first != index:
        age0, male, comorb0 = _patient(seed, first, first_dx or dx)
        age = min(97, age0 + int(rng.integers(0, 3)))
        comorb = sorted(set(comorb0) | set(comorb), key=list(comorb0 + comorb).index)
    side = "right" if rng.random() < 0.55 else "left"
    silent = _shared_silence(seed, index, {m: bool(rng.random() < sc.SILENT[m]) for m in MODALITIES}, redundancy)
    case = SampledCase(case_id=f"RMD-{index + 1:05d}", patient_id=f"P-{first + 1:05d}", diagnosis=dx, severity=s,
                       age=age, male=male,
                       comorbidities=comorb, present=_missing(rng, dx, s, age), silent=silent)

    # image
    for f, p in ({} if silent["image"] else sc.IMAGE_EFFECTS[dx]).items():
        if rng.random() < _firmer(min(0.97, p * (0.7 + 0.5 * s)), redundancy, 0.97):
            params = {"side": "left" if dx == "aortic_dissection" else side,
                      "severity": float(np.clip(s * rng.uniform(0.7, 1.2), 0.05, 1.0))}
            if f == "consolidation":
                params["zone"] = "upper" if dx == "tuberculosis" else pick(("lower", "lower", "middle", "upper"))
            if f == "pleural_effusion" and dx == "heart_failure":
                params["bilateral"] = True
            case.image_findings[f] = params
    case.portable = bool(rng.random() < (0.1 if dx == "no_acute_disease" else 0.15 + 0.5 * s))
    acq = Acquisition.sample(rng, case.portable)
    twin = copy.deepcopy(rng)  # the same film without its findings (draw_radiograph keeps their draws apart)
    image, masks = draw_radiograph(rng, image_size, case.image_findings, acq)
    if case.present["image"]:
        case.image, case.masks = image, masks
        if case.image_findings:
            case.image_without_findings = draw_radiograph(twin, image_size, {}, acq)[0]

    # note
    findings: dict[str, dict] = {}
    for f, p in ({} if silent["note"] else sc.NOTE_EFFECTS[dx]).items():
        if rng.random() < _firmer(min(0.95, p * (0.55 + 0.5 * s)), redundancy, 0.95):
            findings[f] = {"side": side}
    for f, p in BACKGROUND_NOTE.items():
        if f not in findings and rng.random() < p:
            findings[f] = {"side": "left" if rng.random() < 0.5 else "right"}
    if "hypertension_hx" in findings and "hypertension" in comorb:
        comorb = [c for c in comorb if c != "hypertension"]
    text, mentions = write_note(rng, dx, findings, age, male, comorb, pick)
    if case.present["note"]:
        case.note, case.mentions, case.note_findings = text, mentions, findings

    # labs
    values, manifested = _labs(rng, "no_acute_disease" if silent["labs"] else dx, s, age, case.comorbidities,
                               redundancy)
    alt_units = rng.random() < 0.2
    use_alias = rng.random() < 0.2
    measured, measured_names = [], set()
    for lab in sc.LAB_CATALOGUE:
        p_miss = sc.LAB_MISSING.get(lab.name, 0.03)
        if dx in sc.LAB_ORDERED_WHEN.get(lab.name, ()):
            p_miss *= 0.35
        if rng.random() < p_miss:
            continue
        v, unit = values[lab.name], lab.unit
        if alt_units and lab.name in sc.ALT_UNIT_CHOICES and rng.random() < 0.5:
            unit = sc.ALT_UNIT_CHOICES[lab.name]
            scale, offset = lab.alt_units[unit]
            v = (v - offset) / scale
        name = pick(lab.aliases) if use_alias and lab.aliases and rng.random() < 0.5 else lab.name
        measured.append((name, float(f"{v:.4g}"), unit))
        measured_names.add(lab.name)
    if case.present["labs"] and measured:
        case.labs = measured
        case.signal_labs = [n for n in manifested if n in sc.SIGNAL_LABS[dx] and n in measured_names]
    elif case.present["labs"]:
        case.present["labs"] = False
        if not any(case.present.values()):
            case.present["note"], case.note, case.mentions, case.note_findings = True, text, mentions, findings
    return case
