"""Trainable encoders, one per modality *type*, each mapping its input to a latent H_i of width d_h.

Images and notes pass first through a frozen backbone (`backbones.py`); the heads here are what trains.
The ViT option reads raw pixels and trains whole. Labs are encoded from canonical values with a
missing indicator per lab, normalised with statistics of the training data kept as buffers.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from core.model.backbones import TEXT_DIM


class AttentionPool(nn.Module):
    """A learned query attends over tokens (masked), giving one vector per example."""

    def __init__(self, d: int, heads: int = 4):
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)

    def forward(self, tokens: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        q = self.query.expand(tokens.shape[0], -1, -1)
        out, _ = self.attn(q, tokens, tokens, key_padding_mask=pad, need_weights=False)
        return out[:, 0]


class ImageHead(nn.Module):
    """EfficientNet feature map (B, C, g, g) → H_img (B, d_h): each cell projected on its own, then
    attention-pooled over positions, so the evidence stays tied to its cell (what image explanations read)."""

    input_kind = "feature_map"

    def __init__(self, d_h: int, grid: int, dropout: float, channels: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, d_h), nn.GELU())
        self.pos = nn.Parameter(torch.randn(1, grid * grid, d_h) * 0.02)
        self.pool = AttentionPool(d_h)
        self.norm = nn.LayerNorm(d_h)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(fmap.flatten(2).transpose(1, 2)) + self.pos
        return self.norm(self.pool(tokens))


class ViTEncoder(nn.Module):
    """A small vision transformer over raw grey pixels (B, 1, S, S) → H_img, trained from scratch."""

    input_kind = "pixels"

    def __init__(self, d_h: int, image_size: int, patch: int, depth: int, dropout: float):
        super().__init__()
        n = (image_size // patch) ** 2
        self.patchify = nn.Conv2d(1, d_h, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, d_h))
        self.pos = nn.Parameter(torch.randn(1, n + 1, d_h) * 0.02)
        layer = nn.TransformerEncoderLayer(d_h, 4, 2 * d_h, dropout, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_h)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.patchify(img).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1) + self.pos
        return self.norm(self.blocks(x)[:, 0])


class TextHead(nn.Module):
    """Chunk rows (B, n, CHUNK_DIM) — a 384-d embedding, then a negation flag — with a validity mask (B, n)
    → H_text (B, d_h). With `negation`, chunks of negated words are read differently from the others:
    `negation_head="separate"` projects them with weights of their own, so that "no tearing chest pain" can
    count against what "tearing chest pain" counts for (on the embedded cohort the shared projection plus a
    learned vector, "shift", left negating a decisive finding lowering the prediction in only 70 % of cases);
    then chunks are attention-pooled. Without `negation` (checkpoints trained before it) the flag is ignored."""

    def __init__(self, d_h: int, dropout: float, negation: bool = False, negation_head: str = "shift"):
        super().__init__()
        if negation_head not in ("separate", "shift"):
            raise ValueError(f"negation_head must be 'separate' or 'shift', not {negation_head!r}")
        self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(TEXT_DIM, d_h), nn.GELU(), nn.Linear(d_h, d_h))
        separate = negation and negation_head == "separate"
        self.negated = nn.Parameter(torch.randn(d_h) * 0.02) if negation and not separate else None
        self.proj_negated = nn.Sequential(nn.Dropout(dropout), nn.Linear(TEXT_DIM, d_h), nn.GELU(),
                                          nn.Linear(d_h, d_h)) if separate else None
        self.pool = AttentionPool(d_h)
        self.norm = nn.LayerNorm(d_h)

    def forward(self, chunks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        pad = ~valid
        pad[pad.all(1), 0] = False  # an absent note still needs one key; its latent is masked out later
        x, flag = chunks[..., :TEXT_DIM], chunks[..., TEXT_DIM:TEXT_DIM + 1]
        if flag.shape[-1] == 0 or (self.negated is None and self.proj_negated is None):
            tokens = self.proj(x)
        elif self.proj_negated is not None:
            tokens = torch.where(flag > 0.5, self.proj_negated(x), self.proj(x))
        else:
            drop, first, act, second = self.proj
            tokens = second(act(first(drop(x)) + flag * self.negated))
        return self.norm(self.pool(tokens, pad))


class LabEncoder(nn.Module):
    """Canonical lab values (B, L), NaN where not measured → H_struct (B, d_h).

    Values are log-transformed where the catalogue says so, standardised with training statistics, and
    paired with a missing indicator per lab (design §3.1.1: an MLP with normalisation layers)."""

    def __init__(self, n_labs: int, log_mask: list[bool], d_h: int, hidden: int, dropout: float):
        super().__init__()
        self.register_buffer("log_mask", torch.tensor(log_mask, dtype=torch.bool))
        self.register_buffer("mean", torch.zeros(n_labs))
        self.register_buffer("std", torch.ones(n_labs))
        self.mlp = nn.Sequential(nn.Linear(2 * n_labs, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, d_h), nn.LayerNorm(d_h))

    def transform(self, values: torch.Tensor) -> torch.Tensor:
        x = torch.where(self.log_mask, torch.log1p(values.clamp(min=0)), values)
        return (x - self.mean) / self.std

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised values back to canonical units (the inverse of `transform`)."""
        x = z * self.std + self.mean
        return torch.where(self.log_mask, torch.expm1(x), x)

    def fit_stats(self, values: np.ndarray) -> None:
        """Set the normalisation from training values (NaN ignored)."""
        v = np.asarray(values, dtype=np.float64)
        x = np.where(self.log_mask.numpy(), np.log1p(np.clip(v, 0, None)), v)
        with warnings.catch_warnings():  # a lab never measured in training: mean 0, std 1 (it is always missing)
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nan_to_num(np.nanmean(x, 0), nan=0.0)
            std = np.nan_to_num(np.nanstd(x, 0), nan=1.0)
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.std.copy_(torch.as_tensor(np.where(std > 1e-6, std, 1.0), dtype=torch.float32))

    def features(self, values: torch.Tensor) -> torch.Tensor:
        """The MLP's input: standardised values (0 where missing) and missing indicators."""
        missing = torch.isnan(values)
        x = torch.nan_to_num(self.transform(torch.nan_to_num(values, nan=0.0)), nan=0.0) * (~missing)
        return torch.cat([x, missing.to(x.dtype)], -1)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.features(values))
