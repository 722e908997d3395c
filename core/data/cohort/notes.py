"""An admission note with the ground truth of where its decisive words are.

Notes read like emergency-department notes: abbreviations, pertinent negatives ("denies fever"),
irrelevant history, copy-forward noise, the odd typo. Each mention of a finding is recorded with its
character span and whether it is negated, so attributions over words can be scored against truth.

So that a model has to learn what negation means (issue 24), notes deny findings in the very words a
typical case would use, in the phrasings of real notes (pre- and post-triggers, header values), each
recorded as a negated mention: pertinent negatives of another diagnosis on the differential ("No tearing
chest pain radiating to the back." in a pneumonia, or joined to the presenting symptoms: "… presents with
fever and cough but no calf tenderness"), which is where clinicians write them; some atypical
notes deny one of their own diagnosis's findings that this patient does not have ("Calf tenderness:
absent." in a pulmonary embolism); and some histories rule out another diagnosis by name ("PE was
excluded last year."). A finding's words then mean one thing affirmed and the opposite negated, and the
atypical cases keep "negated" from being a shortcut either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.data.cohort.scenario import NOTE_EFFECTS

# No phrase holds a comma: inside a negated list, a comma starts the next item.
PHRASES: dict[str, tuple[str, ...]] = {
    "fever": ("fever to 38.9", "fevers and rigors", "febrile at home", "subjective fevers", "T 39.1 at triage"),
    "productive_cough": ("productive cough", "cough with yellow-green sputum", "cough productive of purulent sputum"),
    "dyspnea": ("shortness of breath", "SOB", "dyspnea on exertion", "DOE", "worsening dyspnea"),
    "pleuritic_pain": ("pleuritic chest pain", "sharp CP worse on inspiration", "pain worse with deep breaths"),
    "sudden_onset": ("sudden onset", "abrupt onset while at rest", "acute onset this morning"),
    "orthopnea": ("orthopnea", "sleeps on 3 pillows", "PND", "cannot lie flat"),
    "leg_edema": ("bilateral LE edema", "pitting edema to the knees", "b/l ankle swelling"),
    "jvd": ("JVD", "elevated JVP", "JVP to the angle of the jaw"),
    "crackles": ("crackles at the {side} base", "rales {side} base", "coarse crackles {side} lower zone"),
    "calf_swelling": ("{side} calf swollen and tender", "unilateral {side} leg swelling", "{side} calf tenderness"),
    "immobilization": ("recent hip surgery", "long-haul flight last week", "post-op day 6 after knee replacement",
                       "immobilized after ankle fracture"),
    "hemoptysis": ("hemoptysis", "coughing up blood", "blood-streaked sputum"),
    "night_sweats": ("night sweats", "drenching sweats at night"),
    "weight_loss": ("weight loss of 6 kg", "unintentional wt loss", "~8 kg wt loss"),
    "tb_exposure": ("recently arrived from an endemic region", "household contact with active TB", "recent incarceration"),
    "tearing_pain": ("tearing chest pain radiating to the back", "ripping interscapular pain", "severe CP radiating to back"),
    "bp_differential": ("BP differential of 30 mmHg between arms", "unequal radial pulses", "R arm BP 170/90 vs L arm 135/80"),
    "decreased_breath_sounds": ("decreased breath sounds on the {side}", "absent breath sounds {side} apex",
                                "hyperresonant to percussion on the {side}"),
    "tall_thin": ("tall thin male", "tall slender build"),
    "tachycardia": ("tachycardic to 118", "HR 124", "sinus tachycardia"),
    "hypertension_hx": ("long-standing poorly controlled HTN", "hx of uncontrolled hypertension"),
    "chest_wall_pain": ("pain reproducible on palpation", "chest wall tenderness", "pain worse with movement of the arm"),
    "anxiety": ("pt anxious", "hx of panic attacks", "recent stressors at work"),
}
NEGATED: dict[str, tuple[str, ...]] = {
    "fever": ("fever", "fevers", "chills"), "productive_cough": ("cough", "sputum production"),
    "hemoptysis": ("hemoptysis",), "leg_edema": ("leg swelling",), "calf_swelling": ("calf pain",),
    "orthopnea": ("orthopnea",), "night_sweats": ("night sweats",), "weight_loss": ("weight loss",),
    "pleuritic_pain": ("pleuritic pain",), "tearing_pain": ("back pain",), "dyspnea": ("SOB",),
}
CHIEF: dict[str, tuple[str, ...]] = {
    "no_acute_disease": ("chest pain", "CP", "chest discomfort"), "pneumonia": ("cough", "fever and cough", "SOB"),
    "heart_failure": ("SOB", "dyspnea", "leg swelling"), "pulmonary_embolism": ("SOB", "chest pain", "CP"),
    "pneumothorax": ("chest pain", "SOB"), "tuberculosis": ("cough", "hemoptysis", "weight loss"),
    "aortic_dissection": ("chest pain", "CP"),
}
COMORBIDITY_TEXT: dict[str, tuple[str, ...]] = {
    "hypertension": ("HTN",), "diabetes": ("DM2 on metformin", "T2DM"), "copd": ("COPD", "COPD on tiotropium"),
    "ckd": ("CKD stage 3",), "smoker": ("30 pack-year smoker", "active smoker"), "anemia": ("chronic anemia",),
}
IRRELEVANT = ("s/p appendectomy 2009", "hypothyroidism on levothyroxine", "seasonal allergies", "knee OA", "GERD",
              "s/p cholecystectomy", "cataract surgery 2019", "migraines", "remote hx of kidney stones", "BPH",
              "osteopenia", "hx of shingles")
SOCIAL = ("Lives with spouse.", "Works as a teacher.", "Retired electrician.", "Drinks socially.", "No illicit drugs.",
          "Lives alone, independent in ADLs.", "Has two dogs.", "Recently returned from a beach holiday.")
NORMAL_EXAM = ("Alert and oriented.", "Heart RRR, no murmurs.", "Abdomen soft, non-tender.", "No focal neuro deficits.",
               "Skin warm and dry.", "Pupils equal and reactive.")
PLAN = ("Plan: CXR, labs, reassess.", "Will obtain CXR and basic labs.", "Dispo pending workup.",
        "Discussed with attending.", "Pt agrees with plan.", "Monitor on telemetry.")
DDX_TEXT = {"pneumonia": "PNA", "heart_failure": "CHF exacerbation", "pulmonary_embolism": "PE",
            "pneumothorax": "PTX", "tuberculosis": "TB", "aortic_dissection": "dissection",
            "no_acute_disease": "MSK pain", "acs": "ACS"}
LEAD_INS = ("Notable for ", "Pt reports ", "Of note, ")
INCIDENTAL = ("recent dental work", "flu vaccine last month", "a new puppy at home", "recent move to a new apartment",
              "a colonoscopy last year", "recently started a new job", "a trip to visit family last month",
              "follow-up with PCP next week", "recent URI in a family member", "a fall from a bicycle 2 years ago")
GRADUAL_ONSET = ("gradual onset over several days", "gradual onset", "insidious onset over the past week")
P_LEAD_IN = 0.55  # an incidental item or a gradual onset, behind the same lead-ins as the findings
# how often a note carries each kind of negation (see the module docstring)
P_PERTINENT = 0.7
P_INLINE = 0.3  # a pertinent negative joined to the presenting symptoms ("… and no tearing chest pain")
P_DENY_OWN = 0.1
P_HISTORY_EXCLUDED = 0.12
# how an absent finding is denied: {p} the phrase as a typical case writes it, {P} the same capitalized
DENIALS = ("Denies {p}. ", "Pt denies {p}. ", "No {p}. ", "Negative for {p}. ", "Without {p}. ", "{P} not present. ",
           "{P}: absent. ", "{P}: denies. ", "{P}: negative. ")
HISTORY_EXCLUDED = ("{dx} was excluded {when}. ", "{dx} ruled out {when}. ", "Prior workup negative for {dx}. ",
                    "No hx of {dx}. ", "{dx} has been excluded {when}. ")
WHEN = ("last year", "in 2021", "on a prior admission", "by CT last spring")
COPY_FORWARD = ("Prior discharge summary (2021): admitted for elective procedure, uncomplicated course, discharged "
                "home on POD 2 with routine follow-up. Medication reconciliation completed. ")


@dataclass
class Mention:
    start: int
    end: int
    finding: str
    negated: bool


@dataclass
class NoteBuilder:
    rng: np.random.Generator
    parts: list[str] = field(default_factory=list)
    mentions: list[Mention] = field(default_factory=list)
    length: int = 0

    def text(self, s: str, typos: bool = True) -> None:
        if typos and self.rng.random() < 0.04 and len(s) > 8:  # an occasional typo outside the evidence
            i = int(self.rng.integers(1, len(s) - 2))
            if s[i].isalpha() and s[i + 1].isalpha():
                s = s[:i] + s[i + 1] + s[i] + s[i + 2:]
        self.parts.append(s)
        self.length += len(s)

    def finding(self, phrase: str, finding: str, negated: bool = False) -> None:
        self.mentions.append(Mention(self.length, self.length + len(phrase), finding, negated))
        self.parts.append(phrase)
        self.length += len(phrase)

    def join(self, items: list[tuple[str, str]], sep: str = ", ", last: str = " and ", negated: bool = False) -> None:
        """Write a list of (phrase, finding) mentions as prose."""
        for i, (phrase, finding) in enumerate(items):
            if i:
                self.text(last if i == len(items) - 1 else sep)
            self.finding(phrase, finding, negated)

    def build(self) -> str:
        return "".join(self.parts)


# the phrases a typical case writes for each finding, as they can be denied (a phrase that negates by itself,
# "absent breath sounds", or whose first words are a trigger once denied, "no hx of", cannot)
DENIABLE = {f: tuple(p for p in phrases if not p.startswith(("absent", "cannot", "hyperresonant", "hx of")))
            for f, phrases in PHRASES.items()}
EXAM_FINDINGS = ("crackles", "jvd", "decreased_breath_sounds", "bp_differential")  # found absent, not denied


def _write_form(b: NoteBuilder, form: str, phrase: str, finding: str) -> None:
    """One negated mention written with `form` ({p}: the phrase; {P}: the phrase capitalized)."""
    key = "{P}" if "{P}" in form else "{p}"
    head, tail = form.split(key)
    b.text(head, typos=False)  # keep the negation cue intact
    b.finding(phrase[:1].upper() + phrase[1:] if key == "{P}" else phrase, finding, negated=True)
    b.text(tail, typos=False)


def _deny_one(b: NoteBuilder, candidates: list[str], pick) -> None:
    """Deny one of `candidates` (findings) in a typical case's words, in one of the DENIALS forms."""
    candidates = [f for f in candidates if DENIABLE.get(f)]
    if not candidates:
        return
    f = pick(candidates)
    phrase = pick(DENIABLE[f]).format(side=pick(("left", "right")))
    _write_form(b, pick([d for d in DENIALS if not (f in EXAM_FINDINGS and "enies" in d)]), phrase, f)


def write_note(rng: np.random.Generator, diagnosis: str, findings: dict[str, dict], age: int, male: bool,
               comorbidities: list[str], pick) -> tuple[str, list[Mention]]:
    """`findings`: note findings present → params (side). `pick(seq)` chooses one item with `rng`."""
    b = NoteBuilder(rng)
    sex = "M" if male else "F"
    b.text(pick(("ED PROVIDER NOTE\n", "Admission H&P\n", "EMERGENCY DEPT NOTE\n", "")))
    b.text(f"CC: {pick(CHIEF[pick(tuple(CHIEF))])}\n")  # often vague and shared across diagnoses
    history = [pick(COMORBIDITY_TEXT[c]) for c in comorbidities]
    history += list(rng.choice(IRRELEVANT, size=int(rng.integers(0, 3)), replace=False))
    rng.shuffle(history)
    b.text(f"HPI: {age} yo {sex} w/ PMH of {', '.join(history) if history else 'nothing significant'}")
    if "hypertension_hx" in findings:
        b.text(" and ")
        b.finding(pick(PHRASES["hypertension_hx"]), "hypertension_hx")
    b.text(" who presents with ")
    symptoms = [f for f in findings if f in ("fever", "productive_cough", "dyspnea", "pleuritic_pain", "orthopnea",
                                             "hemoptysis", "night_sweats", "weight_loss", "tearing_pain", "anxiety")]
    rng.shuffle(symptoms)
    if not symptoms:
        b.text(pick(("chest discomfort", "vague malaise", "feeling unwell")))
    b.join([(pick(PHRASES[f]), f) for f in symptoms])
    inline = [f for d in NOTE_EFFECTS if d != diagnosis for f in NOTE_EFFECTS[d]
              if f not in findings and f not in NOTE_EFFECTS[diagnosis] and DENIABLE.get(f)]
    if inline and rng.random() < P_INLINE:
        f = pick(sorted(set(inline)))
        b.text(pick((" but no ", " and no ", ", no ")), typos=False)
        b.finding(pick(DENIABLE[f]).format(side=pick(("left", "right"))), f, negated=True)
    b.text(f" x{int(rng.integers(1, 10))} days" if rng.random() < 0.6 else "")
    b.text(". ")
    # The lead-ins ("Symptoms began with", "Of note,") are written whether or not a finding follows them, so that
    # only the finding's own words tell (issue 25: the model had learned the lead-ins, which only findings had).
    if "sudden_onset" in findings:
        b.text("Symptoms began with ")
        b.finding(pick(PHRASES["sudden_onset"]), "sudden_onset")
        b.text(". ")
    elif rng.random() < P_LEAD_IN:
        b.text(f"Symptoms began with {pick(GRADUAL_ONSET)}. ")
    leads = [(pick(PHRASES[f]).format(side=findings[f].get("side", "right")), f)
             for f in ("immobilization", "tb_exposure", "calf_swelling", "leg_edema", "chest_wall_pain") if f in findings]
    leads += [(str(x), "") for x in rng.choice(INCIDENTAL, size=int(rng.random() < P_LEAD_IN) + int(rng.random() < 0.3),
                                               replace=False)]
    rng.shuffle(leads)
    for phrase, f in leads:
        b.text(pick(LEAD_INS))
        if f:
            b.finding(phrase, f)
        else:
            b.text(phrase)
        b.text(". ")
    negatives = [f for f in NEGATED if f not in findings and rng.random() < 0.3]
    if negatives:
        b.text(pick(("Denies ", "Pt denies ", "No ")), typos=False)  # keep the negation cue intact
        b.join([(pick(NEGATED[f]), f) for f in negatives], last=" or ", negated=True)
        b.text(". ")
    if rng.random() < P_PERTINENT:
        other = pick(tuple(d for d in NOTE_EFFECTS if d != diagnosis))
        _deny_one(b, [f for f in NOTE_EFFECTS[other] if f not in findings and f not in NOTE_EFFECTS[diagnosis]], pick)
    if rng.random() < P_DENY_OWN:
        _deny_one(b, [f for f in NOTE_EFFECTS[diagnosis] if f not in findings], pick)
    if rng.random() < P_HISTORY_EXCLUDED:
        other = pick(tuple(d for d in DDX_TEXT if d not in (diagnosis, "no_acute_disease", "acs")))
        form = pick(HISTORY_EXCLUDED).replace("{when}", pick(WHEN))
        _write_form(b, form.replace("{dx}", "{P}" if form.startswith("{dx}") else "{p}"), DDX_TEXT[other],
                    f"diagnosis:{other}")
    if rng.random() < 0.06:
        b.text("\n" + COPY_FORWARD * int(rng.integers(4, 12)))
    b.text(f"\nSocial: {' '.join(rng.choice(SOCIAL, size=2, replace=False))}")
    if "tall_thin" in findings:
        b.text(" ")
        b.finding(pick(PHRASES["tall_thin"]).capitalize(), "tall_thin")
        b.text(".")
    b.text("\nExam: ")
    exam = [f for f in ("crackles", "jvd", "decreased_breath_sounds", "tachycardia", "bp_differential") if f in findings]
    rng.shuffle(exam)
    for f in exam:
        b.finding(pick(PHRASES[f]).format(side=findings[f].get("side", "right")), f)
        b.text(". ")
    b.text(" ".join(rng.choice(NORMAL_EXAM, size=int(rng.integers(1, 4)), replace=False)))
    if rng.random() < 0.5:
        ddx = list(rng.choice(list(DDX_TEXT), size=3, replace=False))  # a differential, not the answer
        b.text(f"\nA/P: ddx includes {', '.join(DDX_TEXT[d] for d in ddx)}. {pick(PLAN)}")
    else:
        b.text(f"\nA/P: {pick(PLAN)}")
    return b.build(), b.mentions

