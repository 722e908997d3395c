"""Score a maintained negation library (negspacy's NegEx or medspaCy's ConText) on the NegEx test set, with
the protocol of core/evaluation/negation.py, so its figures sit next to our detector's.

Protocol (same as ours): keep the rows annotated Negated or Affirmed; find the condition in its sentence
(case-insensitive, words joined by \\s+); rows where it is not found are counted as not_located and left
out; the found span is marked as the only entity (label CONDITION) of a spacy.blank("en") doc with a
sentencizer, the library's component runs, and its verdict on that entity is scored: precision, recall, F1
of "negated" against the rest, and specificity. No pretrained pipeline is loaded and nothing is downloaded.

It runs in a separate virtual environment, never the project's .venv: spaCy and its libraries pin their own
numpy/thinc versions (medspaCy 1.3 pulls spaCy 3.7 and numpy 1.x, the project pins numpy 2.x), and this
script imports only the standard library and those libraries, never the project's `core` package.

    python3 -m venv /tmp/negspacy-venv && /tmp/negspacy-venv/bin/pip install negspacy spacy
    /tmp/negspacy-venv/bin/python tools/negation_libraries.py /tmp/negex.txt negspacy [--termset en_clinical]

    python3 -m venv /tmp/medspacy-venv && /tmp/medspacy-venv/bin/pip install medspacy
    /tmp/medspacy-venv/bin/python tools/negation_libraries.py /tmp/negex.txt medspacy

(Tested with negspacy 1.1.0 + spaCy 3.8.18, and medspacy 1.3.1 + spaCy 3.7.5.) --wrong N adds up to N
sentences the library got wrong to the JSON. The file is `rsAnnotations-1-120-random.txt` of chapmanbe/negex,
or the held-out E3C set as the project reads it, written in the same layout:
    python -m core negation --e3c E3C-Corpus/data_annotation/English/layer1 --export /tmp/e3c.txt
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import spacy
from spacy.tokens import Doc, Span


def read_rows(path: Path) -> list[tuple[str, str, bool]]:
    """(condition, sentence, negated) of the rows annotated Negated or Affirmed, read as our evaluation does."""
    rows = list(csv.reader(path.read_text(encoding="utf-8", errors="replace").splitlines(), delimiter="\t"))
    return [(r[1].strip(), r[2], r[3].strip().lower() == "negated") for r in rows[1:]
            if len(r) >= 4 and r[3].strip().lower() in ("negated", "affirmed")]


def locate(condition: str, sentence: str) -> tuple[int, int] | None:
    words = condition.split()
    m = re.search(r"\s+".join(map(re.escape, words)), sentence, re.IGNORECASE) if words else None
    return (m.start(), m.end()) if m else None


def build(library: str, termset: str) -> tuple[spacy.Language, Callable[[Span], bool], dict[str, str]]:
    """A blank English pipeline with a sentencizer and the library's component, how to read its verdict, versions."""
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    if library == "negspacy":
        from negspacy.negation import Negex  # noqa: F401  (registers the "negex" factory)
        from negspacy.termsets import termset as negspacy_termset
        nlp.add_pipe("negex", config={"neg_termset": negspacy_termset(termset).get_patterns()})
        return nlp, lambda ent: bool(ent._.negex), {"negspacy": version("negspacy"), "termset": termset}
    import medspacy  # noqa: F401  (registers the "medspacy_context" factory)
    nlp.add_pipe("medspacy_context")  # default rules shipped with the package (resources/en/context_rules.json)
    return nlp, lambda ent: bool(ent._.is_negated), {"medspacy": version("medspacy"), "rules": "default"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("annotations", type=Path)
    ap.add_argument("library", choices=["negspacy", "medspacy"])
    ap.add_argument("--termset", default="en_clinical", help="negspacy termset: en, en_clinical, en_clinical_sensitive")
    ap.add_argument("--wrong", type=int, default=0, help="list up to this many misjudged sentences")
    args = ap.parse_args()

    nlp, said_negated, versions = build(args.library, args.termset)
    tp = fp = fn = tn = not_located = not_aligned = 0
    wrong: list[dict[str, str]] = []
    for condition, sentence, negated in read_rows(args.annotations):
        found = locate(condition, sentence)
        if found is None:
            not_located += 1
            continue
        doc: Doc = nlp.make_doc(sentence)
        span = doc.char_span(*found, label="CONDITION", alignment_mode="expand")
        if span is None:  # cannot happen with "expand" on a non-empty match; counted to be sure
            not_aligned += 1
            continue
        doc.ents = [span]
        for _, component in nlp.pipeline:
            doc = component(doc)
        said = said_negated(doc.ents[0])
        tp, fp, fn, tn = tp + (said and negated), fp + (said and not negated), \
            fn + (not said and negated), tn + (not said and not negated)
        if said != negated and len(wrong) < args.wrong:
            wrong.append({"condition": condition, "sentence": sentence,
                          "annotated": "negated" if negated else "affirmed"})

    precision, recall = tp / max(1, tp + fp), tp / max(1, tp + fn)
    result = {"library": args.library, "n": tp + fp + fn + tn, "not_located": not_located,
              "not_aligned": not_aligned, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
              "precision": round(precision, 4), "recall": round(recall, 4),
              "specificity": round(tn / max(1, tn + fp), 4),
              "f1": round(2 * precision * recall / max(1e-12, precision + recall), 4),
              "versions": {"spacy": spacy.__version__, **versions}}
    if args.wrong:
        result["wrong"] = wrong
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
