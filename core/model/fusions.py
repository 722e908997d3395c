"""Baseline fusion modules, variants of the one in `robustmdiff.Fusion`, with the same call signature
fuse(h (..., M, d_h), avail (..., M), syn (..., M)) → (Z (..., d), attention or None).

They let every baseline of the evaluation share RobustMDiff's encoders, data and training harness,
so that only the way modalities are combined differs:
- early fusion: concatenate the latents, filling missing ones with zeros, the training mean, or a
  learned missing-modality token;
- late fusion: a classifier per modality, probabilities averaged over the present modalities
  (the model's head is then the identity);
- masked attention (MARIA-style): a transformer over the present modalities' tokens only.
"""

from __future__ import annotations

import torch
from torch import nn


class EarlyFusion(nn.Module):
    def __init__(self, n_modalities: int, d_h: int, impute: str):
        super().__init__()
        if impute not in ("zero", "mean", "token"):
            raise ValueError(f"unknown imputation {impute!r}")
        self.impute = impute
        self.token = nn.Parameter(torch.zeros(n_modalities, d_h)) if impute == "token" else None
        self.register_buffer("mean", torch.zeros(n_modalities, d_h))  # running mean of present latents
        self.proj = nn.Sequential(nn.Linear(n_modalities * d_h, d_h), nn.GELU(), nn.LayerNorm(d_h))

    def forward(self, h: torch.Tensor, avail: torch.Tensor, syn: torch.Tensor):
        a = avail.unsqueeze(-1)
        if self.training and self.impute == "mean":
            with torch.no_grad():
                flat_h, flat_a = h.reshape(-1, *h.shape[-2:]), a.reshape(-1, *a.shape[-2:])
                batch_mean = (flat_h * flat_a).sum(0) / flat_a.sum(0).clamp_min(1)
                self.mean.mul_(0.99).add_(0.01 * batch_mean)
        fill = {"zero": torch.zeros_like(self.mean), "mean": self.mean, "token": self.token}[self.impute]
        x = a * h + (1 - a) * fill
        return self.proj(x.flatten(-2)), None


class LateFusion(nn.Module):
    """log of the mean, over present modalities, of per-modality class probabilities."""

    def __init__(self, n_modalities: int, d_h: int, n_classes: int, hidden: int):
        super().__init__()
        self.heads = nn.ModuleList([nn.Sequential(nn.Linear(d_h, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))
                                    for _ in range(n_modalities)])

    def forward(self, h: torch.Tensor, avail: torch.Tensor, syn: torch.Tensor):
        probs = torch.stack([torch.softmax(head(h[..., i, :]), -1) for i, head in enumerate(self.heads)], -2)
        w = avail.unsqueeze(-1) / avail.sum(-1, keepdim=True).clamp_min(1).unsqueeze(-1)
        return torch.log((w * probs).sum(-2).clamp_min(1e-8)), None


class MaskedAttentionFusion(nn.Module):
    """A [CLS] token and one token per modality; attention never sees the absent ones."""

    def __init__(self, n_modalities: int, d_h: int, depth: int = 2, heads: int = 4):
        super().__init__()
        self.cls = nn.Parameter(torch.zeros(1, d_h))
        self.slot = nn.Parameter(torch.randn(n_modalities, d_h) * 0.02)
        layer = nn.TransformerEncoderLayer(d_h, heads, 2 * d_h, 0.1, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_h)

    def forward(self, h: torch.Tensor, avail: torch.Tensor, syn: torch.Tensor):
        lead = h.shape[:-2]
        x = (h + self.slot).reshape(-1, *h.shape[-2:])
        x = torch.cat([self.cls.expand(len(x), 1, -1), x], 1)
        pad = torch.cat([torch.zeros(len(x), 1, dtype=torch.bool, device=h.device),
                         avail.reshape(-1, avail.shape[-1]) <= 0], 1)
        out = self.blocks(x, src_key_padding_mask=pad)[:, 0]
        return self.norm(out).reshape(*lead, -1), None
