"""Phrase-level note attributions: word scores summed over clauses.

Word attributions of opposite sign cancel inside one phrase ("Normal pulmonary vascularity": normal +5.0,
vascularity −5.3): what the model made of the phrase is their sum, not either word. A note is split into
phrases at

- sentence punctuation (. ; : ! ?) and commas, not inside numbers ("38.9", "1,234", "10:30") and not after
  a few abbreviations ("vs.", "e.g.", "Dr."),
- line breaks (so list items and section lines stay separate phrases),
- before the coordinating words "and", "or", "but", "with", "w/" and the phrase "who presents with"
  (which starts one phrase as a whole),

except inside a list of negated findings (`core/model/negation.py`): "Pt denies orthopnea or pleuritic
pain" stays one phrase, so every item keeps its negation cue, as the model reads them (one negated chunk
per sentence).

Every word (punctuation included) belongs to exactly one phrase, a delimiter to the phrase it ends, so the
phrase scores sum to the word scores' total. No word is left out or filtered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from core.explain.text import WordAttribution
from core.model.negation import negated_spans

CONNECTORS = (("who", "presents", "with"), ("and",), ("or",), ("but",), ("with",), ("w/",))
ABBREVIATIONS = {"vs", "e.g", "i.e", "dr", "mr", "mrs", "ms", "approx", "etc", "cf", "st"}
_NUMBER = re.compile(r"\d")


@dataclass
class PhraseAttribution:
    start: int
    end: int
    text: str
    score: float  # the sum of its words' scores
    words: list[WordAttribution] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "text": self.text, "score": self.score,
                "words": [w.to_dict() for w in self.words]}


def _ends_phrase(text: str, w: WordAttribution, prev: WordAttribution | None, nxt: WordAttribution | None) -> bool:
    """Whether the token `w` (a punctuation mark) closes the phrase it is in."""
    if w.word not in ".;:!?,":
        return False
    if w.word in ".,:" and prev is not None and nxt is not None and prev.end == w.start and nxt.start == w.end \
            and _NUMBER.match(nxt.word) and _NUMBER.search(prev.word[-1:]):
        return False  # 1,234 / 38.9 / 10:30 written with the mark between digits
    if w.word == "." and prev is not None and prev.end == w.start and prev.word.lower() in ABBREVIATIONS:
        return False
    return True


def _starts_connector(words: list[WordAttribution], i: int) -> int:
    """Length (in words) of the connector starting at word i, 0 if none."""
    for conn in CONNECTORS:
        if len(conn) == 1 and conn[0] == "w/":
            # "w/" is tokenised as "w" + "/"
            if words[i].word.lower() == "w" and i + 1 < len(words) and words[i + 1].word == "/" \
                    and words[i + 1].start == words[i].end:
                return 2
            continue
        n = len(conn)
        if i + n <= len(words) and tuple(w.word.lower() for w in words[i:i + n]) == conn:
            return n
    return 0


def _negated_list_continues(words: list[WordAttribution], i: int, negated: list[tuple[int, int]]) -> bool:
    """Whether the split point at word i (a connector or a comma) joins two negated findings."""
    def inside(w: WordAttribution | None) -> bool:
        return w is not None and any(a <= w.start and w.end <= b for a, b in negated)

    before = next((w for w in reversed(words[:i]) if any(ch.isalnum() for ch in w.word)), None)
    after = next((w for w in words[i + 1:] if any(ch.isalnum() for ch in w.word)
                  and w.word.lower() not in ("or", "and")), None)
    return inside(before) and inside(after)


def phrase_groups(text: str, words: list[WordAttribution]) -> list[list[WordAttribution]]:
    """The words grouped into phrases, in order."""
    negated = negated_spans(text)
    groups: list[list[WordAttribution]] = []
    current: list[WordAttribution] = []
    skip = 0
    for i, w in enumerate(words):
        prev = words[i - 1] if i else None
        nxt = words[i + 1] if i + 1 < len(words) else None
        if current and (prev is not None and "\n" in text[prev.end:w.start]):
            groups.append(current)
            current = []
        if skip:
            skip -= 1
        else:
            n = _starts_connector(words, i)
            if n and not _negated_list_continues(words, i, negated):
                if current:
                    groups.append(current)
                    current = []
                skip = n - 1  # the words of "who presents with" do not split again
        current.append(w)
        if _ends_phrase(text, w, prev, nxt) and not (w.word == "," and _negated_list_continues(words, i, negated)):
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    return groups


def phrase_attributions(text: str, words: list[WordAttribution]) -> list[PhraseAttribution]:
    """Phrases of the note with their scores (the sum of their words') and their words."""
    out = []
    for g in phrase_groups(text, words):
        a, b = g[0].start, g[-1].end
        out.append(PhraseAttribution(a, b, text[a:b], float(sum(w.score for w in g)), list(g)))
    return out


def phrase_spans(text: str) -> list[tuple[int, int]]:
    """The (start, end) character spans of the phrases of a text."""
    from core.explain.text import words_of

    words = [WordAttribution(w, a, b, 0.0) for a, b, w in words_of(text)]
    return [(p.start, p.end) for p in phrase_attributions(text, words)]
