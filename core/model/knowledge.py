"""Medical knowledge-enhanced attention (design §3.1.2).

A_med = softmax(H_i Q (R K W_k)^T / sqrt(d_k)) over k concepts, and the context A_med K that joins H_i in
the unified representation. K starts as the text encoder's embeddings of the concept names (projected
to d_h, trainable); R (k × k, fixed) spreads each concept over its graph neighbours and weights
diagnosis concepts by their prevalence, (f_max / f_c)^gamma, so that rare diseases keep a voice.
The design writes K R with K in R^{k×d_h}; as a k×k relevance matrix R acts on the concept axis, we
apply it as R K.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from core.errors import RobustMDiffError


@dataclass
class KnowledgeGraph:
    ids: list[str]
    texts: list[str]
    types: list[str]
    edges: list[tuple[int, int, float]]
    names: dict[str, tuple[str, ...]] = field(default_factory=dict)  # how notes name a diagnosis (its `names`)

    @classmethod
    def load(cls, path: str | Path, classes: list[str]) -> "KnowledgeGraph":
        try:
            d = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise RobustMDiffError(f"knowledge graph {Path(path).name}: cannot be read ({e})") from None
        concepts = d.get("concepts", [])
        ids = [c["id"] for c in concepts]
        texts = [c.get("text", c["id"]) for c in concepts]
        types = [c.get("type", "finding") for c in concepts]
        for c in classes:  # every class has a diagnosis concept, even when the graph does not know it
            if c not in ids:
                ids.append(c)
                texts.append(c.replace("_", " "))
                types.append("diagnosis")
        index = {c: i for i, c in enumerate(ids)}
        edges = []
        for a, b, w in d.get("edges", []):
            if a in index and b in index:
                edges.append((index[a], index[b], float(w)))
        names = {c["id"]: tuple(str(n) for n in c["names"]) for c in concepts if c.get("names")}
        return cls(ids, texts, types, edges, names)

    def class_names(self, c: str) -> tuple[str, ...]:
        """How a note may name class `c`: the graph's `names` for it, its concept text, its own name in words."""
        i = self.ids.index(c) if c in self.ids else None
        own = (c.replace("_", " "), *([self.texts[i]] if i is not None else []))
        return tuple(dict.fromkeys((*self.names.get(c, ()), *own)))

    def relevance(self, prevalence: dict[str, float], gamma: float) -> np.ndarray:
        """R = D^-1 (I + A) diag(w): neighbour smoothing, then prevalence weights on diagnosis concepts."""
        k = len(self.ids)
        a = np.eye(k)
        for i, j, w in self.edges:
            a[i, j] = a[j, i] = max(a[i, j], w)
        a = a / a.sum(1, keepdims=True)
        f = {c: p for c, p in prevalence.items() if p > 0}
        f_max = max(f.values()) if f else 1.0
        w = np.array([(f_max / f[c]) ** gamma if t == "diagnosis" and c in f else 1.0
                      for c, t in zip(self.ids, self.types)])
        return (a * (w / w.mean())[None, :]).astype(np.float32)


def embed_concepts(texts: list[str]) -> np.ndarray:
    """The text encoder's (mean-pooled) embedding of each concept name: the initial K."""
    from core.model.backbones import TEXT_DIM, embed_texts

    return np.stack([e[0, :TEXT_DIM] for e in embed_texts(texts, max_tokens=64, max_chunks=1)])


class KnowledgeAttention(nn.Module):
    def __init__(self, concept_embeddings: np.ndarray, relevance: np.ndarray, d_h: int, d_k: int):
        super().__init__()
        self.register_buffer("concepts", torch.as_tensor(concept_embeddings, dtype=torch.float32))
        self.register_buffer("relevance", torch.as_tensor(relevance, dtype=torch.float32))
        self.to_latent = nn.Linear(self.concepts.shape[1], d_h)
        self.query = nn.Linear(d_h, d_k, bias=False)  # Q
        self.key = nn.Linear(d_h, d_k, bias=False)
        self.scale = 1.0 / math.sqrt(d_k)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h (B, M, d_h) → context A_med K (B, M, d_h) and A_med (B, M, k)."""
        k = self.to_latent(self.concepts)
        keys = self.key(self.relevance @ k)
        a = torch.softmax(self.query(h) @ keys.T * self.scale, dim=-1)
        return a @ k, a
