"""Which words of a clinical note are negated: a rule-based scope detector in the NegEx tradition.

A note is read as word tokens. A *pre-negation* trigger ("no", "denies", "negative for", …) negates the
words after it, a *post-negation* trigger ("not raised", "absent", "ruled out", …) the words before it,
until a scope terminator (sentence end, newline, "but", "which", "presents with", …), another trigger,
or `MAX_SCOPE` content words. Lists stay in scope: each "," / "/" / "or" / "and" starts a fresh window,
so "Denies fever, chills or SOB" negates all three. Pseudo-triggers ("no change", "not ruled out",
"gram negative", "without difficulty", …) negate nothing. A post-trigger that opens its clause is a
modifier, not a negation ("absent breath sounds on the left" is a finding).

`negated_spans` gives the character spans of the negated words (never the trigger words), which
`core/model/backbones.chunk_note` moves into a chunk of their own, flagged as negated. `negate_mention`
writes the counterfactual a clinician would write ("no " + finding) for the faithfulness benchmark.

medspaCy's ConText was considered first: medspacy 1.3.1 requires spacy<3.8, whose thinc needs
numpy<2, which conflicts with the pinned numpy 2.x, so it is not installed.
"""

from __future__ import annotations

import re

# Trigger lists after Chapman et al. 2001 (NegEx, J Biomed Inform 34:301) and ConText (Harkema et al. 2009).
PRE_TRIGGERS = (
    "no", "not", "denies", "denied", "deny", "denying", "without", "negative for", "free of", "absence of",
    "no evidence of", "no sign of", "no signs of", "no history of", "no hx of", "no complaints of",
    "never", "neither", "rules out", "ruled out for", "was ruled out for", "did not have", "does not have",
    "not have", "no suggestion of", "no findings of", "not demonstrate", "fails to reveal", "resolution of",
)
POST_TRIGGERS = (
    "not raised", "not elevated", "not present", "not seen", "not appreciated", "not noted", "not identified",
    "not detected", "not palpable", "absent", "ruled out", "was ruled out", "is ruled out",
    "has been ruled out", "negative", "is negative", "was negative", "were negative", "resolved",
    "has resolved", "have resolved",
)
PSEUDO_TRIGGERS = (
    "no change", "no significant change", "no interval change", "no increase", "no decrease",
    "no further", "not only", "not necessarily", "not certain", "not sure", "not ruled out",
    "not been ruled out", "not rule out", "rule out", "gram negative", "without difficulty",
    "not drain", "not cause", "not extend", "not exclude", "no suspicious change",
)
TERMINATORS = (
    "but", "however", "although", "though", "except", "aside from", "apart from", "other than", "which",
    "who", "presents with", "presenting with", "presented with", "reports", "reported", "complains of",
    "c/o", "secondary to", "due to", "cause of", "etiology of",
)
SENTENCE_ENDS = {".", ";", ":", "!", "?", "\n"}
JOINERS = {",", "/", "or", "and", "nor", "&"}
POST_JOINERS = JOINERS - {","}  # "Heart RRR, JVP not raised": a comma before a post-trigger ends its scope
FUNCTION_WORDS = {"a", "an", "the", "of", "to", "in", "on", "at", "with", "by", "for", "from", "any", "his",
                  "her", "their", "between", "into", "over", "under"}
MAX_SCOPE = 6  # content words per list item (function words are not counted)

_TOKEN = re.compile(r"\n|\w+(?:[-'’.]\w+)*|[^\w\s]", re.UNICODE)


def _phrases() -> tuple[dict[tuple[str, ...], str], int]:
    table: dict[tuple[str, ...], str] = {}
    for role, items in (("term", TERMINATORS), ("post", POST_TRIGGERS), ("pre", PRE_TRIGGERS),
                        ("pseudo", PSEUDO_TRIGGERS)):  # a later role wins a tie (pseudo over all)
        for p in items:
            table[tuple(m.group().lower() for m in _TOKEN.finditer(p))] = role
    return table, max(len(k) for k in table)


_PHRASES, _LONGEST = _phrases()


def _roles(low: list[str]) -> tuple[list[str], list[tuple[int, int, str]]]:
    """A role per token — pre, post, pseudo, term (phrases, longest match first), end (sentence end),
    join (list joiner), punct or word — and the trigger phrases (start, stop, role)."""
    roles = [""] * len(low)
    phrases: list[tuple[int, int, str]] = []
    i = 0
    while i < len(low):
        for n in range(min(_LONGEST, len(low) - i), 0, -1):
            role = _PHRASES.get(tuple(low[i:i + n]))
            if role is None:
                continue
            if role == "post" and (i == 0 or roles[i - 1] in ("end", "term", "pre", "pseudo")):
                role = "word"  # a post-trigger opening its clause modifies what follows: "absent breath sounds"
                n = 1
            roles[i:i + n] = [role] * n
            if role in ("pre", "post"):
                phrases.append((i, i + n, role))
            i += n
            break
        else:
            t = low[i]
            roles[i] = ("end" if t in SENTENCE_ENDS else "join" if t in JOINERS
                        else "word" if t[0].isalnum() or t[0] == "_" else "punct")
            i += 1
    return roles, phrases


def _scope(roles: list[str], low: list[str], start: int, step: int, joiners: set[str]) -> list[int]:
    """Token indices negated by a trigger whose scope starts at `start` and runs in direction `step`."""
    out: list[int] = []
    count = 0
    j = start
    while 0 <= j < len(roles):
        role = roles[j]
        if role in ("end", "term", "pre", "post", "pseudo"):
            break
        if role == "join":
            if low[j] not in joiners:
                break
            count = 0
        elif role == "word":
            if low[j] not in FUNCTION_WORDS:
                count += 1
                if count > MAX_SCOPE:
                    break
            out.append(j)
        j += step
    # no function word at the scope's edges ("denies any fever": "any" is no finding)
    keep = [j for j in out if low[j] not in FUNCTION_WORDS]
    if not keep:
        return []
    lo, hi = min(keep), max(keep)
    return [j for j in out if lo <= j <= hi]


def negated_spans(text: str) -> list[tuple[int, int]]:
    """Character spans (start, end) of the negated words of `text`, sorted and non-overlapping; words
    separated only by spaces form one span ("pleuritic pain"). Trigger words are never part of a span."""
    matches = list(_TOKEN.finditer(text))
    low = [m.group().lower() for m in matches]
    roles, phrases = _roles(low)
    negated = [False] * len(low)
    for a, b, role in phrases:
        scope = _scope(roles, low, b, 1, JOINERS) if role == "pre" else _scope(roles, low, a - 1, -1, POST_JOINERS)
        for k in scope:
            negated[k] = True
    spans: list[tuple[int, int]] = []
    for k, m in enumerate(matches):
        if not negated[k]:
            continue
        if spans and negated[k - 1] and not text[spans[-1][1]:m.start()].strip():
            spans[-1] = (spans[-1][0], m.end())
        else:
            spans.append((m.start(), m.end()))
    return spans


def is_negated(text: str, start: int, end: int, spans: list[tuple[int, int]] | None = None) -> bool:
    """Whether the mention at [start, end) is negated: each of its words (list joiners and function words
    aside) lies inside a negated span."""
    spans = negated_spans(text) if spans is None else spans
    words = [(start + m.start(), start + m.end()) for m in _TOKEN.finditer(text[start:end])
             if m.group()[0].isalnum() and m.group().lower() not in JOINERS | FUNCTION_WORDS]
    return bool(words) and all(any(a <= s and e <= b for a, b in spans) for s, e in words)


def negate_mention(text: str, start: int, end: int) -> str:
    """`text` with the mention at [start, end) negated as a clinician would write it: "no " before it
    ("No " at the start of a sentence, the mention's first letter then lower-cased unless it is an
    abbreviation), or "denies " where "no" would fuse with the mention into another phrase ("no hx of").
    Deterministic; `negated_spans` of the result covers the mention (`is_negated`)."""
    mention = text[start:end]
    before = text[:start].rstrip(" \t")
    sentence_start = not before or before[-1] in ".;:!?\n"
    first = mention.split(" ", 1)[0]
    if sentence_start and not (len(first) > 1 and first[:2].isupper()):
        mention = mention[:1].lower() + mention[1:]
    out = ""
    for cue in ("no", "denies"):
        cue = cue.capitalize() if sentence_start else cue
        out = text[:start] + cue + " " + mention + text[end:]
        at = start + len(cue) + 1
        if is_negated(out, at, at + len(mention)):
            break
    return out
