"""Note attributions: Integrated Gradients (or gradient × input) on the token embeddings, summed over
the embedding dimension, then merged from sub-word tokens back to the words of the original text.
IG's step count is chosen per note until its completeness error is within 5 % (core/explain/ig.py).

Captum attributes the embeddings of every chunk of the note at once (one example = the whole note), so
notes longer than the transformer's limit are explained whole. Each word keeps its character offsets.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import asdict, dataclass

import numpy as np
import torch
from captum.attr import InputXGradient

from core.explain.graph import CaseGraph
from core.explain.ig import SCHEDULE, IGResult, integrated_gradients

WORD = re.compile(r"\w+(?:[-'’./]\w+)*|[^\w\s]", re.UNICODE)
TEXT_METHODS = ("integrated_gradients", "gradient_x_input")
TEXT_STEPS = SCHEDULE  # IG step counts tried in turn until the completeness error is ≤ 5 % (core/explain/ig.py)
TEXT_BATCH = 32  # IG path points per forward/backward pass through the text transformer


@dataclass
class WordAttribution:
    word: str
    start: int
    end: int
    score: float

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
        info = integrated_gradients(f, emb, base, schedule=schedule, max_seconds=max_seconds,
                                    internal_batch_size=TEXT_BATCH)
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
