"""The full RobustMDiff model (design §3): encoders → conditional latent diffusion that restores the
latents of absent modalities → knowledge-enhanced fusion into Z → classifier.

Absent modalities never reach the output except through synthesis: their latents are zeroed at
encoding and replaced by samples of the denoiser, which sees only the present latents and the mask.
K samples are drawn as one batch; the classifier reads each completed latent and the probabilities are
averaged, so the spread of the samples shows as uncertainty in the answer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from core.model.config import Config
from core.model.denoiser import LatentDenoiser
from core.model.encoders import ImageHead, LabEncoder, TextHead, ViTEncoder
from core.model.fusions import EarlyFusion, LateFusion, MaskedAttentionFusion
from core.model.knowledge import KnowledgeAttention
from core.model.schedule import NoiseSchedule

Batch = dict[str, dict[str, torch.Tensor]]
CONFIDENCE_POINTS = 32


@dataclass
class DataInfo:
    """What the model must know of the data: modalities (name, type), classes, labs, prevalence."""

    modalities: list[tuple[str, str]]
    classes: list[str]
    labs: dict[str, list[str]]
    lab_log: dict[str, list[bool]]
    prevalence: dict[str, float]
    rare_classes: list[str]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DataInfo":
        return cls(modalities=[tuple(m) for m in d["modalities"]], classes=list(d["classes"]), labs=d["labs"],
                   lab_log=d["lab_log"], prevalence=d["prevalence"], rare_classes=list(d.get("rare_classes", [])))

    @property
    def names(self) -> list[str]:
        return [m[0] for m in self.modalities]


class Fusion(nn.Module):
    """Z = sum_i alpha_i(m) W_i (H_i + A_med K): per-modality projections W_i, weights alpha that adapt to the
    mask (which modalities are real, which synthesized, which missing), normalised over what is there."""

    def __init__(self, n_modalities: int, d_h: int, knowledge: KnowledgeAttention | None):
        super().__init__()
        self.knowledge = knowledge
        self.proj = nn.ModuleList([nn.Linear(d_h, d_h) for _ in range(n_modalities)])
        self.gate = nn.Linear(2 * n_modalities, n_modalities)
        self.norm = nn.LayerNorm(d_h)

    def forward(self, h: torch.Tensor, avail: torch.Tensor, syn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """h (..., M, d_h); avail, syn (..., M) in {0, 1} → Z (..., d_h) and A_med (..., M, k)."""
        attn = None
        if self.knowledge is not None:
            ctx, attn = self.knowledge(h)
            h = h + ctx
        u = torch.stack([p(h[..., i, :]) for i, p in enumerate(self.proj)], -2)
        score = self.gate(torch.cat([avail - syn, syn], -1)).masked_fill(avail <= 0, float("-inf"))
        alpha = torch.softmax(score, -1).nan_to_num(0.0)
        return self.norm((alpha.unsqueeze(-1) * u).sum(-2)), attn


class RobustMDiff(nn.Module):
    def __init__(self, info: DataInfo, config: Config, n_concepts: int, concept_dim: int = 384):
        super().__init__()
        self.info, self.config = info, config
        mc, dc = config.model, config.diffusion
        encoders: dict[str, nn.Module] = {}
        for name, kind in info.modalities:
            if kind == "image":
                encoders[name] = (ViTEncoder(mc.d_h, mc.image_size, mc.vit_patch, mc.vit_depth, mc.dropout)
                                  if mc.image_encoder == "vit" else ImageHead(mc.d_h, mc.image_size // 32, mc.dropout))
            elif kind == "text":
                encoders[name] = TextHead(mc.d_h, mc.dropout)
            else:
                encoders[name] = LabEncoder(len(info.labs[name]), info.lab_log[name], mc.d_h, mc.lab_hidden, mc.dropout)
        self.encoders = nn.ModuleDict(encoders)
        m = len(info.modalities)
        self.head = nn.Sequential(nn.Linear(mc.d_h, mc.head_hidden), nn.ReLU(), nn.Dropout(mc.dropout),
                                  nn.Linear(mc.head_hidden, len(info.classes)))
        if mc.fusion == "knowledge":
            knowledge = (KnowledgeAttention(np.zeros((n_concepts, concept_dim)), np.eye(n_concepts), mc.d_h, mc.d_k)
                         if mc.use_knowledge else None)
            self.fusion = Fusion(m, mc.d_h, knowledge)
        elif mc.fusion.startswith("early_"):
            self.fusion = EarlyFusion(m, mc.d_h, mc.fusion.removeprefix("early_"))
        elif mc.fusion == "late":
            self.fusion = LateFusion(m, mc.d_h, len(info.classes), mc.head_hidden)
            self.head = nn.Identity()  # the fusion already gives (log) class probabilities
        elif mc.fusion == "masked_attention":
            self.fusion = MaskedAttentionFusion(m, mc.d_h)
        else:
            raise ValueError(f"unknown fusion {mc.fusion!r}")
        self.schedule = NoiseSchedule(dc.train_steps, dc.beta_schedule)
        self.denoiser = LatentDenoiser(m, mc.d_h, dc.denoiser_width, dc.denoiser_depth, dc.denoiser_heads) if dc.enabled else None
        # set after training: temperature scaling, latent scale and the confidence calibration per modality
        self.register_buffer("temperature", torch.ones(()))
        self.register_buffer("latent_scale", torch.ones(m))
        self.register_buffer("confidence_x", torch.linspace(0, 1, CONFIDENCE_POINTS).repeat(m, 1))
        self.register_buffer("confidence_y", torch.linspace(1, 0, CONFIDENCE_POINTS).repeat(m, 1))

    # ---- encoding and fusion -----------------------------------------------------------------------
    def encode(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents H (B, M, d_h), zero for absent modalities, and the presence mask (B, M) bool."""
        hs, present = [], []
        for name, kind in self.info.modalities:
            b = batch[name]
            enc = self.encoders[name]
            h = enc(b["x"], b["valid"]) if kind == "text" else enc(b["x"])
            p = b["present"]
            hs.append(h * p.unsqueeze(-1).to(h.dtype))
            present.append(p)
        return torch.stack(hs, 1), torch.stack(present, 1)

    def fuse(self, h: torch.Tensor, avail: torch.Tensor, syn: torch.Tensor | None = None):
        avail = avail.to(h.dtype)
        syn = torch.zeros_like(avail) if syn is None else syn.to(h.dtype)
        return self.fusion(h, avail, syn)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(z)

    # ---- diffusion ---------------------------------------------------------------------------------
    def diffusion_loss(self, h: torch.Tensor, present: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Denoising loss (design §3.1.3) on latents of present modalities hidden from the denoiser."""
        if self.denoiser is None:
            return h.new_zeros(())
        b, m, _ = h.shape
        keep = torch.rand(b, m, generator=generator, device=h.device) < 0.5
        given = present & keep
        # every example needs something given and something to restore
        none_given = given.sum(1) == 0
        first = torch.argmax(present.to(torch.int8), 1)
        given[none_given, first[none_given]] = True
        target = present & ~given
        rows = target.any(1)
        if not rows.any():
            return h.new_zeros(())
        x0 = h.detach()[rows]
        given, target = given[rows], target[rows]
        noise = torch.randn(x0.shape, generator=generator, device=h.device)
        t = torch.randint(0, self.schedule.steps, (len(x0),), generator=generator, device=h.device)
        out = self.denoiser(self.schedule.add_noise(x0, noise, t), t, x0 * given.unsqueeze(-1), given)
        err = ((out - self.schedule.target(x0, noise, t, self.config.diffusion.prediction)) ** 2).mean(-1)
        return (err * target).sum() / target.sum()

    @torch.no_grad()
    def synthesize(self, h: torch.Tensor, given: torch.Tensor, samples: int, steps: int,
                   generator: torch.Generator | None = None, shared_noise: bool = True) -> torch.Tensor:
        """K samples of the complete latents (K, B, M, d_h): given slots are kept, the others restored by DDIM.

        With `shared_noise` every case starts from the same K noise draws, so a case's prediction does
        not depend on which other cases share its batch (deterministic per case for a fixed seed)."""
        k, (b, m, d) = samples, h.shape
        hk = h.unsqueeze(0).expand(k, b, m, d).reshape(k * b, m, d)
        gk = given.unsqueeze(0).expand(k, b, m).reshape(k * b, m)
        shape = (k, 1, m, d) if shared_noise else (k, b, m, d)
        x = torch.randn(shape, generator=generator, device=h.device, dtype=h.dtype).expand(k, b, m, d).reshape(k * b, m, d)
        ts = self.schedule.timesteps(steps)
        cond = hk * gk.unsqueeze(-1)
        for i, t in enumerate(ts):
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            out = self.denoiser(x, torch.full((k * b,), t, device=h.device, dtype=torch.long), cond, gk)
            x = self.schedule.ddim_step(x, out, t, t_prev, self.config.diffusion.prediction)
        x = torch.where(gk.unsqueeze(-1), hk, x)
        return x.view(k, b, m, d)

    # ---- prediction ----------------------------------------------------------------------------------
    def sample_logits(self, h: torch.Tensor, present: torch.Tensor, samples: int, steps: int,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits per diffusion sample (K, B, C) and the samples (K, B, M, d_h); without diffusion K = 1."""
        if self.denoiser is None or bool(present.all()):
            z, _ = self.fuse(h, present)
            return self.logits(z).unsqueeze(0), None
        hs = self.synthesize(h, present, samples, steps, generator)
        ones = torch.ones_like(present)
        z, _ = self.fuse(hs, ones.unsqueeze(0).expand(samples, -1, -1), (~present).unsqueeze(0).expand(samples, -1, -1))
        return self.logits(z), hs

    def spread(self, hs: torch.Tensor) -> torch.Tensor:
        """Per modality, how far the K samples disagree, relative to the latent's population spread (B, M)."""
        return hs.std(0, unbiased=False).mean(-1) / self.latent_scale

    def confidence(self, spread: torch.Tensor) -> torch.Tensor:
        """Calibrated synthesis confidence (B, M) in [0, 1], from the validation mapping spread → agreement."""
        out = torch.empty_like(spread)
        for i in range(spread.shape[1]):
            x, y = self.confidence_x[i].cpu().numpy(), self.confidence_y[i].cpu().numpy()
            out[:, i] = torch.as_tensor(np.interp(spread[:, i].cpu().numpy(), x, y), dtype=spread.dtype)
        return out
