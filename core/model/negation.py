"""Which words of a clinical note are negated: a rule-based scope detector in the NegEx tradition.

A note is read as word tokens. A *pre-negation* trigger ("no", "denies", "negative for", …) negates the
words after it, a *post-negation* trigger ("not raised", "absent", "was excluded", …) the words before
it, until a scope terminator (sentence end, newline, "but", "which", "presents with", …), another
trigger, or `MAX_SCOPE` content words. Lists stay in scope while their items are findings: each "," /
"/" / "or" / "and" starts a fresh window, so "Denies fever, chills or SOB" negates all three, but an
item that is a new clause ends the scope before it: one with a verb or a subject ("Denies chest pain,
has shortness of breath"), and after a comma one longer than `LIST_ITEM` content words (numbers aside)
or with a duration ("No fever, productive cough for three days", "No chest trauma, sudden tearing chest
pain radiating to the back"). A header's value negates the header: "TB: negative", "Fever: absent",
"Cough: denies", "Allergies - none". Pseudo-triggers ("no change", "not ruled out", "gram negative",
"without difficulty", …) negate nothing. A post-trigger that opens its clause, or a one-word one
followed by a word, is a modifier, not a negation ("absent breath sounds on the left", "with negative
deflections" are findings).

Measured on the NegEx test set of 2,376 annotated clinical sentences written by others
(`python -m core negation --negex FILE`, core/evaluation/negation.py; BENCHMARKS.md).

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
    "-ve for", "not consistent with", "no known", "excluded", "no further", "none", "nor was", "nor were",
    "nor is", "nor are", "nor did", "nor does", "nor has", "nor had",
)
POST_TRIGGERS = (
    "not raised", "not elevated", "not present", "not seen", "not appreciated", "not noted", "not identified",
    "not detected", "not palpable", "absent", "ruled out", "was ruled out", "is ruled out",
    "has been ruled out", "negative", "is negative", "was negative", "were negative", "resolved",
    "has resolved", "have resolved", "excluded", "was excluded", "is excluded", "were excluded",
    "has been excluded", "been excluded",
)
PSEUDO_TRIGGERS = (
    "no change", "no significant change", "no interval change", "no increase", "no decrease",
    "not only", "not necessarily", "not certain", "not sure", "not ruled out",
    "not been ruled out", "not rule out", "rule out", "gram negative", "without difficulty",
    "not drain", "not cause", "not extend", "not exclude", "no suspicious change", "without change",
    "not changed", "to exclude", "exclude",
)
TERMINATORS = (
    "but", "however", "although", "though", "except", "aside from", "apart from", "other than", "which",
    "who", "presents with", "presenting with", "presented with", "reports", "reported", "complains of",
    "c/o", "secondary to", "due to", "cause of", "etiology of", "positive for", "positive",
)
# a header's value that negates the header ("TB: negative", "Allergies - none")
HEADER_CUES = {"negative", "neg", "absent", "denies", "denied", "none", "no", "not present", "nil"}
# an item with one of these is a new clause, not another finding of the list
CLAUSE_WORDS = {"is", "are", "was", "were", "be", "been", "has", "have", "had", "does", "did", "do", "remained",
                "remains", "became", "reports", "reported", "states", "stated", "says", "said", "seemed", "seems",
                "appears", "appeared", "shows", "showed", "presents", "presented", "started", "began", "developed",
                "underwent", "takes", "took", "uses", "used", "radiating", "radiates", "he", "she", "they", "we",
                "i", "it", "pt", "there"}
DURATION_WORDS = {"one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "several", "few",
                  "day", "days", "week", "weeks", "hour", "hours", "hrs", "month", "months", "year", "years", "since"}
SENTENCE_ENDS = {".", ";", ":", "!", "?", "\n"}
JOINERS = {",", "/", "or", "and", "nor", "&"}
POST_JOINERS = JOINERS - {","}  # "Heart RRR, JVP not raised": a comma before a post-trigger ends its scope
FUNCTION_WORDS = {"a", "an", "the", "of", "to", "in", "on", "at", "with", "by", "for", "from", "any", "his",
                  "her", "their", "between", "into", "over", "under"}
MAX_SCOPE = 6  # content words per list item (function words are not counted)
LIST_ITEM = 3  # content words of a finding after a comma in a negated list ("shortness of breath" is 2)

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
            modifier = role == "post" and (i == 0 or roles[i - 1] in ("end", "term", "pre", "pseudo") or (
                n == 1 and i + 1 < len(low) and low[i + 1][0].isalnum() and low[i + 1] not in JOINERS))
            if modifier:  # "absent breath sounds", "with negative deflections": a finding, not a negation
                role = "word"
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


def _item(roles: list[str], low: list[str], start: int) -> list[int]:
    """Token indices of the list item that starts at `start` (up to the next joiner, end or trigger)."""
    out = []
    j = start
    while j < len(roles) and roles[j] in ("word", "punct"):
        out.append(j)
        j += 1
    return out


def _new_clause(roles: list[str], low: list[str], joiner: int) -> bool:
    """Whether the item after a list joiner is a new clause rather than another finding (see the module)."""
    item = [low[k] for k in _item(roles, low, joiner + 1) if roles[k] == "word"]
    if any(w in CLAUSE_WORDS for w in item):
        return True
    if low[joiner] != ",":
        return False
    if any(w in DURATION_WORDS for w in item):
        return True
    return len([w for w in item if w not in FUNCTION_WORDS and not w[0].isdigit()]) > LIST_ITEM


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
            if low[j] not in joiners or (step > 0 and _new_clause(roles, low, j)):
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


def _header_scopes(roles: list[str], low: list[str]) -> list[list[int]]:
    """"TB: negative", "Cough: denies", "Allergies - none": the header before a negating value."""
    out = []
    for i, t in enumerate(low[:-1]):
        if t not in (":", "-") or i == 0:
            continue
        cue = next((c for c in HEADER_CUES if low[i + 1:i + 1 + len(c.split())] == c.split()), None)
        if cue is None:
            continue
        after = i + 1 + len(cue.split())
        if after == len(low) or roles[after] in ("end", "join", "punct"):
            out.append(_scope(roles, low, i - 1, -1, POST_JOINERS))
    return out


def negated_spans(text: str) -> list[tuple[int, int]]:
    """Character spans (start, end) of the negated words of `text`, sorted and non-overlapping; words
    separated only by spaces form one span ("pleuritic pain"). Trigger words are never part of a span."""
    matches = list(_TOKEN.finditer(text))
    low = [m.group().lower() for m in matches]
    roles, phrases = _roles(low)
    negated = [False] * len(low)
    scopes = _header_scopes(roles, low)
    for a, b, role in phrases:
        if role == "pre":
            scopes.append(_scope(roles, low, b, 1, JOINERS))
        else:  # "Partial small bowel obstruction, resolved.": a comma right before a closing post-trigger
            closing = b == len(low) or roles[b] == "end"
            start = a - 2 if closing and a >= 2 and low[a - 1] == "," else a - 1
            scopes.append(_scope(roles, low, start, -1, POST_JOINERS))
    for scope in scopes:
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
