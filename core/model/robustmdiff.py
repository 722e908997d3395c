"""The full RobustMDiff model (design §3): encoders → conditional latent diffusion that restores the
latents of absent modalities → knowledge-enhanced fusion into Z → classifier.

Absent modalities never reach the output except through synthesis: their latents are zeroed at
encoding and replaced by samples of the denoiser, which sees only the present latents and the mask.
K samples are drawn as one batch; the classifier reads each completed latent and the probabilities are
averaged, so the spread of the samples shows as uncertainty in the answer. A case's noise draws come from
a hash of its own inputs and the sampler seed (`case_noise`), never from its batch-mates.

What is fitted after training (`core/calibration/`) lives here as buffers, so a checkpoint carries it:
temperature and class-prior bias, the synthesis-confidence model, the lab decoders, the concept baseline.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from core.model.backbones import image_map_shape
from core.model.config import Config
from core.model.denoiser import LatentDenoiser
from core.model.encoders import ImageHead, LabEncoder, TextHead, ViTEncoder
from core.model.fusions import EarlyFusion, LateFusion, MaskedAttentionFusion
from core.model.knowledge import KnowledgeAttention
from core.model.schedule import NoiseSchedule

if TYPE_CHECKING:
    from core.distributed import BatchDraws

Batch = dict[str, dict[str, torch.Tensor]]
# per missing modality, what the synthesis-confidence model reads (then one "given" flag per modality)
SIGNALS = ("log_spread", "expected_change", "information_gain", "sample_disagreement", "margin", "entropy")
CONFIDENCE_RANGE = (0.005, 0.995)  # a probability the model cannot vouch for beyond what validation showed
PATTERN_MODALITIES = 8  # a temperature per availability pattern up to this many modalities; one for all beyond


def pattern_index(given: torch.Tensor) -> torch.Tensor:
    """The availability pattern of each row of a given-mask (..., M) as an integer (bit i = modality i given);
    0 for every row when there are more modalities than `PATTERN_MODALITIES`."""
    m = given.shape[-1]
    if m > PATTERN_MODALITIES:
        return torch.zeros(given.shape[:-1], dtype=torch.long, device=given.device)
    return (given.long() << torch.arange(m, device=given.device)).sum(-1)


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


def case_seeds(keys: np.ndarray, given: np.ndarray, seed: int) -> list[int]:
    """One sampler seed per case from the content keys of its given modalities and the sampler seed:
    the same inputs draw the same noise, alone or in any batch."""
    out = []
    for k, g in zip(np.asarray(keys, np.int64), np.asarray(given, bool)):
        h = hashlib.blake2b(np.int64(seed).tobytes() + np.where(g, k, 0).astype("<i8").tobytes(), digest_size=8)
        out.append(int.from_bytes(h.digest(), "little") >> 1)
    return out


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


class LabDecoder(nn.Module):
    """What a lab latent says about the lab values: a linear map H_labs → standardised values (fitted by
    ridge regression on real latents), with the residual scale and the interval factor fitted on
    validation so that [low, high] covers 80 % of real values."""

    def __init__(self, d_h: int, n_labs: int):
        super().__init__()
        self.register_buffer("weight", torch.zeros(n_labs, d_h))
        self.register_buffer("bias", torch.zeros(n_labs))
        self.register_buffer("sigma", torch.ones(n_labs))
        self.register_buffer("q", torch.full((n_labs,), 1.2816))  # N(0,1) 80 % half-width until fitted

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.weight.T + self.bias

    def learned(self) -> torch.Tensor:
        """(L,) bool: which labs had enough real values to be fitted; the others were never seen measured
        in training (e.g. a field another group holds) and have nothing to say."""
        return (self.weight != 0).any(1) | (self.bias != 0)

    def interval(self, hk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """K latent samples (K, B, d_h) → standardised median, low and high (B, L) of the assumed values."""
        v = self(hk)
        centre = v.median(0).values
        scale = (v.var(0, unbiased=False) + self.sigma ** 2).sqrt()
        return centre, centre - self.q * scale, centre + self.q * scale


def _image_head(mc) -> ImageHead:
    channels, grid = image_map_shape(mc.image_features, mc.image_size)
    return ImageHead(mc.d_h, grid, mc.dropout, channels)


class RobustMDiff(nn.Module):
    def __init__(self, info: DataInfo, config: Config, n_concepts: int, concept_dim: int = 384):
        super().__init__()
        self.info, self.config = info, config
        mc, dc = config.model, config.diffusion
        encoders: dict[str, nn.Module] = {}
        for name, kind in info.modalities:
            if kind == "image":
                encoders[name] = (ViTEncoder(mc.d_h, mc.image_size, mc.vit_patch, mc.vit_depth, mc.dropout)
                                  if mc.image_encoder == "vit" else _image_head(mc))
            elif kind == "text":
                encoders[name] = TextHead(mc.d_h, mc.dropout, mc.note_negation, mc.negation_head)
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
        # with one modality nothing is ever synthesized from another: no denoiser (its loss would be a constant)
        self.denoiser = LatentDenoiser(m, mc.d_h, dc.denoiser_width, dc.denoiser_depth, dc.denoiser_heads) \
            if dc.enabled and m > 1 else None
        self.decoders = nn.ModuleDict({name: LabDecoder(mc.d_h, len(info.labs[name]))
                                       for name, kind in info.modalities if kind == "tabular"})
        # set after training (core/calibration/): temperature and class-prior bias, latent scale, the
        # synthesis-confidence model (logistic regression on clipped, standardised signals), concept baseline
        f = len(SIGNALS) + m
        self.register_buffer("temperature", torch.ones(2 ** m if m <= PATTERN_MODALITIES else 1))
        self.register_buffer("class_bias", torch.zeros(len(info.classes)))
        self.register_buffer("latent_scale", torch.ones(m))
        self.register_buffer("conf_lo", torch.full((m, f), -1e6))
        self.register_buffer("conf_hi", torch.full((m, f), 1e6))
        self.register_buffer("conf_mean", torch.zeros(m, f))
        self.register_buffer("conf_std", torch.ones(m, f))
        self.register_buffer("conf_w", torch.zeros(m, f))
        self.register_buffer("conf_b", torch.zeros(m))
        self.register_buffer("concept_baseline", torch.zeros(m, n_concepts))

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

    def probabilities(self, logits: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities softmax(logits / T_m + b): logits (..., B, C), given (B, M). The
        temperature depends on which modalities were given (the availability pattern m), the prior
        correction b does not; both are fitted on validation on exactly this quantity averaged over the
        samples (`core/calibration/temperature.py`)."""
        t = self.temperature[pattern_index(given)].unsqueeze(-1)
        return torch.softmax(logits.float() / t + self.class_bias, -1)

    def completed_probabilities(self, hs: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
        """Per-sample calibrated probabilities (K, B, C) of completed latents hs (K, B, M, d_h), where
        `given` (B, M) marks the real slots and the rest are synthesized."""
        k = hs.shape[0]
        z, _ = self.fuse(hs, torch.ones_like(given).unsqueeze(0).expand(k, -1, -1),
                         (~given).unsqueeze(0).expand(k, -1, -1))
        return self.probabilities(self.logits(z), given)

    # ---- diffusion ---------------------------------------------------------------------------------
    def diffusion_loss(self, h: torch.Tensor, present: torch.Tensor, draws: BatchDraws) -> torch.Tensor:
        """Denoising loss (design §3.1.3) on latents of present modalities hidden from the denoiser: the
        mean squared error over every hidden latent of the global batch (`draws`, core/distributed.py)."""
        if self.denoiser is None:
            return h.new_zeros(())
        b, m, d = h.shape
        # drawn for every row on the generator's device (the CPU), then moved: one stream on every device and
        # in every process, whatever the rows turn out to need
        keep = draws.rand(m).to(h.device) < 0.5
        noise = draws.randn(m, d).to(h.device)
        t = draws.randint(self.schedule.steps).to(h.device)
        given = present & keep
        # every example needs something given and something to restore
        none_given = given.sum(1) == 0
        first = torch.argmax(present.to(torch.int8), 1)
        given[none_given, first[none_given]] = True
        target = present & ~given
        rows = target.any(1)
        total = h.new_zeros(())
        if rows.any():
            x0, given, target_rows, noise, t = h.detach()[rows], given[rows], target[rows], noise[rows], t[rows]
            out = self.denoiser(self.schedule.add_noise(x0, noise, t), t, x0 * given.unsqueeze(-1), given)
            err = ((out - self.schedule.target(x0, noise, t, self.config.diffusion.prediction)) ** 2).mean(-1)
            total = (err * target_rows).sum()
        return draws.ratio(total, target.sum())

    def case_noise(self, keys: np.ndarray, given: torch.Tensor, samples: int, seed: int) -> torch.Tensor:
        """Starting noise (K, B, M, d_h) for the sampler, each case's from its own seed (`case_seeds`)."""
        m, d = given.shape[1], self.config.model.d_h
        seeds = case_seeds(keys, given.cpu().numpy(), seed)
        x = torch.stack([torch.randn((samples, m, d), generator=torch.Generator().manual_seed(s)) for s in seeds], 1)
        return x.to(given.device)

    @torch.no_grad()
    def synthesize(self, h: torch.Tensor, given: torch.Tensor, noise: torch.Tensor, steps: int) -> torch.Tensor:
        """Complete latents (K, B, M, d_h) from starting noise (K, B, M, d_h): given slots are kept, the others
        restored by deterministic DDIM."""
        k, (b, m, d) = noise.shape[0], h.shape
        hk = h.unsqueeze(0).expand(k, b, m, d).reshape(k * b, m, d)
        gk = given.unsqueeze(0).expand(k, b, m).reshape(k * b, m)
        x = noise.to(h.dtype).reshape(k * b, m, d)
        ts = self.schedule.timesteps(steps)
        cond = hk * gk.unsqueeze(-1)
        for i, t in enumerate(ts):
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            out = self.denoiser(x, torch.full((k * b,), t, device=h.device, dtype=torch.long), cond, gk)
            x = self.schedule.ddim_step(x, out, t, t_prev, self.config.diffusion.prediction)
        x = torch.where(gk.unsqueeze(-1), hk, x)
        return x.view(k, b, m, d)

    # ---- prediction ----------------------------------------------------------------------------------
    def sample_probabilities(self, h: torch.Tensor, present: torch.Tensor, noise: torch.Tensor | None,
                             steps: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Calibrated probabilities per diffusion sample (K, B, C) and the completed latents (K, B, M, d_h);
        nothing to synthesize (or no denoiser): K = 1 and no samples."""
        if self.denoiser is None or bool(present.all()) or noise is None:
            z, _ = self.fuse(h, present)
            return self.probabilities(self.logits(z), present).unsqueeze(0), None
        hs = self.synthesize(h, present, noise, steps)
        return self.completed_probabilities(hs, present), hs

    def spread(self, hs: torch.Tensor) -> torch.Tensor:
        """Per modality, how far the K samples disagree, relative to the latent's population spread (B, M)."""
        return hs.std(0, unbiased=False).mean(-1) / self.latent_scale

    def synthesis_signals(self, hs: torch.Tensor, probs_k: torch.Tensor, present: torch.Tensor,
                          change: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        """What the confidence model reads (B, M, F): per modality `SIGNALS`, then the given mask."""
        b, m = present.shape
        pbar = probs_k.mean(0)
        top2 = pbar.topk(min(2, pbar.shape[-1]), -1).values
        margin = top2[:, 0] - (top2[:, 1] if top2.shape[1] > 1 else 0)
        disagree = (probs_k.argmax(-1) != pbar.argmax(-1)).float().mean(0)
        per_case = torch.stack([disagree, margin, entropy(pbar)], -1).unsqueeze(1).expand(b, m, 3)
        per_mod = torch.stack([self.spread(hs).clamp_min(1e-6).log(), change.nan_to_num(0), gain.nan_to_num(0)], -1)
        return torch.cat([per_mod, per_case, present.float().unsqueeze(1).expand(b, m, m)], -1)

    def confidence(self, signals: torch.Tensor) -> torch.Tensor:
        """Synthesis confidence (B, M): the probability that the answer stays the same when the real modality
        is added, from a logistic model whose inputs are clipped to the range seen on validation."""
        x = torch.maximum(torch.minimum(signals, self.conf_hi), self.conf_lo)
        logit = (((x - self.conf_mean) / self.conf_std) * self.conf_w).sum(-1) + self.conf_b
        return torch.sigmoid(logit).clamp(*CONFIDENCE_RANGE)

    def concept_attention(self, h: torch.Tensor) -> torch.Tensor | None:
        """Knowledge-attention weights over the concepts (..., M, k), or None without knowledge fusion."""
        knowledge = getattr(self.fusion, "knowledge", None)
        return None if knowledge is None else knowledge(h)[1]
