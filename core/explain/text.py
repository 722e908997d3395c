"""Note attributions: Integrated Gradients (or gradient × input) on the token embeddings, summed over
the embedding dimension, then merged from sub-word tokens back to the words of the original text.
IG's step count is chosen per note until its completeness error is within 5 % (core/explain/ig.py).

Integrated Gradients is hierarchical by default (`note_attribution`, issue 25): first over the note's units
(the clauses or sentences the model reads, one pooled MiniLM vector each, already computed for the
prediction), through the text head only — cheap, and complete for the whole note against the shown
prediction; then over the words of the units that carry most of that attribution (`UNIT_SHARE`, at most
`MAX_UNITS`), the other units held as they are — MiniLM runs forward and backward over those few units
only. Every unit's words on request (`words="all"`): the whole note's token embeddings at once, as before.
Both baselines are the same: [PAD] for every word token. Each word keeps its character offsets.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import asdict, dataclass

import numpy as np
import torch
from captum.attr import InputXGradient

from core.explain.graph import CaseGraph
from core.explain.ig import SCHEDULE, IGResult
from core.model.backbones import TEXT_DIM, NoteChunks, TextBackbone

WORD = re.compile(r"\w+(?:[-'’./]\w+)*|[^\w\s]", re.UNICODE)
TEXT_METHODS = ("integrated_gradients", "gradient_x_input")
TEXT_STEPS = SCHEDULE  # IG step counts tried in turn until the completeness error is ≤ 5 % (core/explain/ig.py)
TEXT_BATCH = 32  # IG path points per forward/backward pass through the text transformer
NOTE_WORDS = ("top", "all")  # words of the units that matter (default), or of every unit
UNIT_SHARE = 0.8  # expand units, largest |attribution| first, until they hold this share of the note's total
MAX_UNITS = 4  # … and never more than this many (each costs MiniLM forward and backward at every path point)


@dataclass
class WordAttribution:
    word: str
    start: int
    end: int
    score: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class UnitAttribution:
    """One unit of the note as the model reads it (a clause or sentence; its negated words are a unit of their
    own): its span, its Integrated Gradients attribution, and whether its words were attributed too."""
    start: int
    end: int
    score: float
    negated: bool
    words: bool

    def to_dict(self) -> dict:
        return asdict(self)


def words_of(text: str) -> list[tuple[int, int, str]]:
    """Words and punctuation marks of a text with their character spans."""
    return [(m.start(), m.end(), m.group()) for m in WORD.finditer(text)]


def merge_tokens(text: str, offsets: list[tuple[int, int]], scores: list[float]) -> list[WordAttribution]:
    """Sum sub-word token scores into the words that contain them."""
    words = words_of(text)
    starts = [w[0] for w in words]
    totals = np.zeros(len(words))
    for (a, b), s in zip(offsets, scores):
        if b <= a:
            continue
        i = bisect.bisect_right(starts, a) - 1
        if i >= 0 and a < words[i][1]:
            totals[i] += s
    return [WordAttribution(w, a, b, float(t)) for (a, b, w), t in zip(words, totals)]


def note_ig(graph: CaseGraph, name: str, method: str = "integrated_gradients", steps: int | tuple[int, ...] = TEXT_STEPS,
            target: int | None = None, max_seconds: float | None = None
            ) -> tuple[list[WordAttribution], IGResult | None]:
    """Word attributions for the target class, and for IG its result (relative completeness error and
    steps used; None for gradient × input). `steps`: one fixed count, or the counts to try in turn."""
    target = graph.target if target is None else target
    chunks = graph.note_chunks(name)
    emb, base = graph.note_embeddings(chunks)

    def f(e: torch.Tensor) -> torch.Tensor:
        return graph.objective(graph.probs_from_note(name, chunks, e), target)

    info = None
    if method == "integrated_gradients":
        schedule = (steps,) if isinstance(steps, int) else tuple(steps)
        info = graph.integrate(graph.index(name), lambda e: graph.note_latent(name, chunks, e), emb, base, target,
                               schedule=schedule, max_seconds=max_seconds, internal_batch_size=TEXT_BATCH)
        attr = info.attributions
    elif method == "gradient_x_input":
        attr = InputXGradient(f).attribute(emb.clone().requires_grad_(True))
    else:
        raise ValueError(f"unknown text method {method!r}; use one of {TEXT_METHODS}")
    per_token = attr.sum(-1)[0].detach().cpu().numpy()  # (n_chunks, L) including [CLS]/[SEP]
    offsets, scores = [], []
    for c, offs in enumerate(chunks.offsets):
        offsets += offs
        scores += per_token[c, 1:1 + len(offs)].tolist()
    return merge_tokens(graph.case.inputs[name], offsets, scores), info


def _unit_rows(graph: CaseGraph, name: str, chunks: NoteChunks) -> tuple[torch.Tensor, torch.Tensor]:
    """The note's unit rows (1, n, CHUNK_DIM) as prediction computed them, and the rows of its baseline (every
    word token [PAD]; the negation flags kept), computed once without gradients."""
    rows = torch.as_tensor(graph.table.text[name][0], device=graph.device)[None]
    _, base = graph.note_embeddings(chunks)
    with torch.no_grad():
        pooled = TextBackbone(graph.device).pooled_from_embeddings(base, chunks.attention_mask.to(graph.device))
    return rows, torch.cat([pooled.to(rows.dtype), rows[..., TEXT_DIM:]], -1)


def _spans(chunks: NoteChunks) -> list[tuple[int, int]]:
    return [(min(a for a, _ in offs), max(b for _, b in offs)) if offs else (0, 0) for offs in chunks.offsets]


def _expanded(scores: np.ndarray, share: float = UNIT_SHARE, most: int = MAX_UNITS) -> list[int]:
    """The units whose words are attributed: largest |attribution| first until `share` of the total."""
    order = np.argsort(-np.abs(scores), kind="stable")
    total, kept, chosen = float(np.abs(scores).sum()), 0.0, []
    for i in order[:most]:
        chosen.append(int(i))
        kept += abs(float(scores[i]))
        if total <= 0 or kept >= share * total:
            break
    return sorted(chosen)


def note_attribution(graph: CaseGraph, name: str, steps: int | tuple[int, ...] = TEXT_STEPS,
                     target: int | None = None, words: str = "top"
                     ) -> tuple[list[WordAttribution], list[UnitAttribution], IGResult, IGResult]:
    """Hierarchical Integrated Gradients (module docstring): word attributions (0 for the words of units not
    expanded), unit attributions, and the IG results of the unit level (complete for the whole note against the
    prediction shown) and of the word level (complete for the expanded units, the others held as they are)."""
    if words not in NOTE_WORDS:
        raise ValueError(f"unknown note words {words!r}; use one of {NOTE_WORDS}")
    target = graph.target if target is None else target
    schedule = (steps,) if isinstance(steps, int) else tuple(steps)
    chunks = graph.note_chunks(name)
    rows, base_rows = _unit_rows(graph, name, chunks)
    enc, index = graph.model.encoders[name], graph.index(name)
    valid = torch.ones(rows.shape[:2], dtype=torch.bool, device=graph.device)

    def from_rows(r: torch.Tensor) -> torch.Tensor:
        return enc(r, valid.expand(len(r), -1))

    units = graph.integrate(index, from_rows, rows, base_rows, target, schedule=schedule)
    unit_scores = units.attributions.sum(-1)[0].detach().cpu().numpy()
    chosen = list(range(len(unit_scores))) if words == "all" else _expanded(unit_scores)
    sel = torch.tensor(chosen, device=graph.device)
    emb, base = graph.note_embeddings(chunks)
    mask = chunks.attention_mask.to(graph.device)[sel]
    backbone = TextBackbone(graph.device)

    def from_words(e: torch.Tensor) -> torch.Tensor:
        full = rows.expand(len(e), -1, -1).clone()
        full[:, sel, :TEXT_DIM] = backbone.pooled_from_embeddings(e, mask).to(full.dtype)
        return from_rows(full)

    detail = graph.integrate(index, from_words, emb[:, sel], base[:, sel], target, schedule=schedule,
                             internal_batch_size=TEXT_BATCH)
    per_token = detail.attributions.sum(-1)[0].detach().cpu().numpy()  # (len(chosen), L) incl. [CLS]/[SEP]
    offsets, scores = [], []
    for r, c in enumerate(chosen):
        offs = chunks.offsets[c]
        offsets += offs
        scores += per_token[r, 1:1 + len(offs)].tolist()
    spans = _spans(chunks)
    unit_rows = [UnitAttribution(a, b, float(x), bool(neg), i in chosen)
                 for i, ((a, b), x, neg) in enumerate(zip(spans, unit_scores, chunks.negated))]
    return merge_tokens(graph.case.inputs[name], offsets, scores), unit_rows, units, detail
