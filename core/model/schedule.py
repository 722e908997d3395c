"""The noise schedule as an object of its own: betas, the forward process, and deterministic DDIM steps.

Forward: q(Z_t | Z_0) = N(sqrt(abar_t) Z_0, (1 - abar_t) I). Reverse with DDIM (eta = 0): from the
denoiser's output, estimate Z_0 and the noise, and move to an earlier step; with few steps this is the
fast sampler. The denoiser may predict the noise eps (the design's L_diff = ||eps - eps_theta||^2) or the
velocity v = sqrt(abar) eps - sqrt(1 - abar) Z_0 (Salimans & Ho, 2022): the same objective up to a
per-step weight, and far more stable with few sampling steps because it never divides by sqrt(abar)
near pure noise. The default is v; `prediction: epsilon` restores the literal form (with Z_0 clipped).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def cosine_betas(steps: int, s: float = 0.008) -> torch.Tensor:
    t = torch.linspace(0, steps, steps + 1, dtype=torch.float64) / steps
    abar = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - abar[1:] / abar[:-1]).clamp(max=0.999).float()


def linear_betas(steps: int, start: float = 1e-4, end: float = 0.02) -> torch.Tensor:
    return torch.linspace(start * 1000 / steps, end * 1000 / steps, steps, dtype=torch.float64).float()


BETAS = {"cosine": cosine_betas, "linear": linear_betas}


class NoiseSchedule(nn.Module):
    clip = 10.0  # bound on |x0| for epsilon-prediction (latents are layer-normalised, about unit scale)

    def __init__(self, steps: int = 1000, kind: str = "cosine"):
        super().__init__()
        if kind not in BETAS:
            raise ValueError(f"unknown beta schedule {kind!r}; use one of {sorted(BETAS)}")
        self.steps = steps
        betas = BETAS[kind](steps)
        self.register_buffer("betas", betas)
        self.register_buffer("alphas_cumprod", torch.cumprod(1 - betas.double(), 0).float())

    def _abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[t.long()]
        return a.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self._abar(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def predict_x0(self, xt: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self._abar(t, xt)
        return (xt - (1 - a).sqrt() * eps) / a.sqrt()

    def timesteps(self, n: int) -> list[int]:
        """n steps evenly spaced from T-1 downwards ('trailing' spacing: the first step sees pure noise)."""
        n = max(1, min(n, self.steps))
        return sorted({int(round(self.steps - i * self.steps / n)) - 1 for i in range(n)}, reverse=True)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, prediction: str) -> torch.Tensor:
        """What the denoiser learns to output: the noise (epsilon) or the velocity v = sqrt(abar) eps - sqrt(1 - abar) x0."""
        if prediction == "epsilon":
            return noise
        a = self._abar(t, x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    def ddim_step(self, xt: torch.Tensor, out: torch.Tensor, t: int, t_prev: int, prediction: str = "v") -> torch.Tensor:
        """One deterministic DDIM update from step t to t_prev (t_prev = -1 means 'to Z_0')."""
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[t_prev] if t_prev >= 0 else torch.ones((), device=xt.device)
        if prediction == "epsilon":
            # x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) blows up where abar ~ 0: clip it to a sane range
            eps = out
            x0 = ((xt - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-self.clip, self.clip)
        else:
            x0 = a_t.sqrt() * xt - (1 - a_t).sqrt() * out
            eps = (xt - a_t.sqrt() * x0) / (1 - a_t).sqrt().clamp_min(1e-8)
        return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
