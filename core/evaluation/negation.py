"""How well the note negation detector (core/model/negation.py) reads clinical sentences written by others.

Two public annotated sets, neither shipped (their sentences are real clinical text under their own terms):
- the NegEx test set (Chapman et al. 2001; `rsAnnotations-1-120-random.txt` in the public repository
  chapmanbe/negex): 2,376 sentences from discharge summaries and radiology reports, each with one
  condition annotated Negated or Affirmed. The condition is located in its sentence (case-insensitively;
  sentences where it cannot be found are counted and left out). The detector's rules were refined on this
  set's errors (issue 24), so its figures there are in-sample;
- the English clinical cases of the E3C corpus (hltfbk/E3C-Corpus, `data_annotation/English/layer1`,
  WebAnno XMI; CC BY-NC): each clinical entity (CLINENTITY) with the polarity of the events (EVENT) that
  overlap it, NEG or POS, at its exact offsets in its sentence; entities no event overlaps have no label
  and are left out. Never looked at while writing the rules: the held-out check. Its labels are noisy
  (some plainly negated entities carry POS because the NEG mark sits on another word of the phrase).
The detector says whether each mention is negated; precision, recall and F1 are computed for "negated"
against the rest.
"""

from __future__ import annotations

import csv
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from core.errors import InputError
from core.model.negation import is_negated

# published figures on the same set's origin (NegEx paper, 1,235 findings of 1,000 sentences)
NEGEX_PUBLISHED = {"sensitivity (recall)": 0.778, "specificity": 0.945, "PPV (precision)": 0.845}


@dataclass(frozen=True)
class Annotated:
    condition: str
    sentence: str
    negated: bool
    span: tuple[int, int] | None = None  # the condition's offsets in the sentence, where the set gives them


def read_negex(path: str | Path) -> list[Annotated]:
    """Rows of a NegEx-style annotation file (tab-separated, a header, columns Condition, sentence and the
    negation status), Negated or Affirmed (other statuses, e.g. Possible, are left out)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise InputError(path.name, f"cannot be read ({e.strerror})") from None
    rows = list(csv.reader(text.splitlines(), delimiter="\t"))
    if not rows or len(rows[0]) < 4 or "condition" not in rows[0][1].lower():
        raise InputError(path.name, "is not a NegEx annotation file (tab-separated: line number, Condition, "
                                    "sentence, negation_status, ...)")
    out = []
    for r in rows[1:]:
        if len(r) >= 4 and r[3].strip().lower() in ("negated", "affirmed"):
            out.append(Annotated(r[1].strip(), r[2], r[3].strip().lower() == "negated"))
    return out


_XMI = {"cas": "http:///uima/cas.ecore", "custom": "http:///webanno/custom.ecore",
        "seg": "http:///de/tudarmstadt/ukp/dkpro/core/api/segmentation/type.ecore"}


def read_e3c(folder: str | Path) -> list[Annotated]:
    """The clinical entities of E3C's WebAnno XMI files in `folder` (English layer 1), labelled by the polarity
    of the events that overlap them (any NEG: negated); entities without an overlapping event are left out."""
    files = sorted(Path(folder).glob("*.xml"))
    if not files:
        raise InputError(Path(folder).name, "has no E3C .xml files (use data_annotation/English/layer1)")
    out = []
    for path in files:
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as e:
            raise InputError(path.name, f"is not valid XML ({e})") from None
        sofa = root.find("cas:Sofa", _XMI)
        if sofa is None:
            raise InputError(path.name, "is not a UIMA CAS XMI file (no Sofa)")
        text = sofa.get("sofaString", "")
        sentences = sorted((int(x.get("begin")), int(x.get("end"))) for x in root.findall("seg:Sentence", _XMI))
        events = [(int(x.get("begin")), int(x.get("end")), x.get("polarity")) for x in root.findall("custom:EVENT", _XMI)]
        for entity in root.findall("custom:CLINENTITY", _XMI):
            b, e = int(entity.get("begin")), int(entity.get("end"))
            polarity = {p for eb, ee, p in events if eb < e and b < ee}
            sentence = next(((sb, se) for sb, se in sentences if sb <= b and e <= se), None)
            if not polarity or sentence is None:
                continue
            sb, se = sentence
            out.append(Annotated(text[b:e], text[sb:se], "NEG" in polarity, (b - sb, e - sb)))
    return out


def write_negex(rows: list[Annotated], path: str | Path) -> None:
    """`rows` as a NegEx-style file (line number, Condition, sentence, negation_status, temporality, experiencer)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["line number", "Condition", "sentence", "negation_status", "temporality", "experiencer"])
        w.writerows([i, r.condition, " ".join(r.sentence.split()), "Negated" if r.negated else "Affirmed", "", ""]
                    for i, r in enumerate(rows, 1))


def locate(condition: str, sentence: str) -> tuple[int, int] | None:
    """The condition's span in its sentence, whitespace-insensitive and case-insensitive, or None."""
    words = condition.split()
    if not words:
        return None
    m = re.search(r"\s+".join(re.escape(w) for w in words), sentence, re.IGNORECASE)
    return (m.start(), m.end()) if m else None


def score(rows: list[Annotated]) -> dict:
    """Precision, recall, F1 of 'negated', with the sentences the detector got wrong."""
    tp = fp = fn = tn = missing = 0
    wrong: list[dict] = []
    for r in rows:
        span = r.span or locate(r.condition, r.sentence)
        if span is None:
            missing += 1
            continue
        said = is_negated(r.sentence, *span)
        tp, fp = tp + (said and r.negated), fp + (said and not r.negated)
        fn, tn = fn + (not said and r.negated), tn + (not said and not r.negated)
        if said != r.negated:
            wrong.append({"condition": r.condition, "sentence": r.sentence, "annotated": "negated" if r.negated
                          else "affirmed"})
    precision = tp / max(1, tp + fp)
    recall = tp / max(1, tp + fn)
    return {"n": tp + fp + fn + tn, "not_located": missing, "negated": tp + fn, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "precision": precision, "recall": recall, "specificity": tn / max(1, tn + fp),
            "f1": 2 * precision * recall / max(1e-12, precision + recall), "wrong": wrong}


def markdown(result: dict) -> str:
    lines = ["| measure | this detector | NegEx as published (its own 1,235 findings) |", "|---|---|---|",
             f"| precision (PPV) | {result['precision']:.3f} | {NEGEX_PUBLISHED['PPV (precision)']:.3f} |",
             f"| recall (sensitivity) | {result['recall']:.3f} | {NEGEX_PUBLISHED['sensitivity (recall)']:.3f} |",
             f"| specificity | {result['specificity']:.3f} | {NEGEX_PUBLISHED['specificity']:.3f} |",
             f"| F1 | {result['f1']:.3f} | – |", "",
             f"{result['n']} mentions located ({result['negated']} annotated negated); {result['not_located']} "
             f"conditions not found in their sentence were left out. Read wrongly ({len(result['wrong'])}):", ""]
    lines += [f"- {w['annotated']}: *{w['condition']}* — {' '.join(w['sentence'].split())[:160]}" for w in result["wrong"]]
    return "\n".join(lines)
