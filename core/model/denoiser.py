"""The conditional latent denoiser eps_theta(Z_t, t, m): a small transformer over one token per modality.

Each modality slot is a token. Slots that are given (present) carry their latent H_i; slots to restore
carry the noisy Z_t. Slot and state embeddings tell the network which is which (the mask m), and a
time embedding tells it the noise level. It predicts the noise for every slot; only the restored
slots count in the loss and in sampling.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], -1)


class LatentDenoiser(nn.Module):
    def __init__(self, n_modalities: int, d_h: int, width: int, depth: int, heads: int):
        super().__init__()
        self.width = width
        self.noisy_in = nn.Linear(d_h, width)
        self.given_in = nn.Linear(d_h, width)
        self.slot = nn.Embedding(n_modalities, width)
        self.state = nn.Embedding(2, width)  # 0: to restore, 1: given
        self.time = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, 0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, d_h))
        nn.init.zeros_(self.out[1].weight)
        nn.init.zeros_(self.out[1].bias)

    def forward(self, zt: torch.Tensor, t: torch.Tensor, given_h: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
        """zt, given_h: (B, M, d_h); t: (B,); given: (B, M) bool → predicted noise (B, M, d_h)."""
        g = given.unsqueeze(-1).to(zt.dtype)
        slots = torch.arange(zt.shape[1], device=zt.device)
        tok = g * self.given_in(given_h) + (1 - g) * self.noisy_in(zt)
        tok = tok + self.slot(slots)[None] + self.state(given.long())
        tok = tok + self.time(time_embedding(t, self.width))[:, None]
        return self.out(self.blocks(tok))
