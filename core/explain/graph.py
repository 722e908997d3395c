"""One case as differentiable functions of each input, for attribution.

`CaseGraph` encodes the case once, fixes the K diffusion noises for what is missing (the same per-case
noise as prediction), and then exposes the predicted class probabilities as a function of one modality's
input at a time, the other present inputs held fixed: pixels for the image, token embeddings for the note
(or its pooled chunk rows), standardised values for the labs, or the latents H_i themselves (design §3.3.2).

What is explained is the prediction shown, also when a modality is missing (issue 25). `integrate` runs
Integrated Gradients over one modality's input together with the K synthesized samples: both travel in a
straight line, the input from its baseline to its value and the samples from those the model synthesizes for
the baseline input (same noise, deterministic DDIM) to those of the prediction. The attributions are then
complete for the prediction shown: Σ input attributions + the samples' attribution = log p(shown) −
log p(input at baseline, the missing modalities synthesized again from it). The samples' part is reported as
the input's influence "through what it makes the model synthesize" (`IGResult.through_synthesis`): the
sampler costs two runs per attribution, not one per path point (which would be K × steps denoiser passes per
point: seconds per modality on a CPU). Held fixed: the other present inputs, the noise and the calibration.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from core.data.dataset import CaseInputs
from core.data.readers import LabPanel, Scan
from core.errors import NoModalityError
from core.explain.ig import IGResult, integrated_gradients
from core.features import image_input
from core.inference import Predictor
from core.prediction import Prediction
from core.model.backbones import ImageBackbone, NoteChunks, TextBackbone, chunk_note, tokenizer


class CaseGraph:
    def __init__(self, predictor: Predictor, case: CaseInputs, absent=(), samples: int | None = None,
                 steps: int | None = None, seed: int = 0):
        self.predictor, self.case, self.seed = predictor, case, seed
        self.model = model = predictor.model
        self.device = predictor.device
        self.names = [n for n, _ in model.info.modalities]
        self.kinds = dict(model.info.modalities)
        absent = set(absent)
        drop = np.array([[n in absent for n in self.names]])
        self.table = predictor.features([case])
        self.present = torch.as_tensor(self.table.present[0] & ~drop[0], device=self.device)
        if not bool(self.present.any()):
            raise NoModalityError("no modality is present to explain")
        k = samples or model.config.diffusion.samples
        s = steps or model.config.diffusion.sample_steps
        self.samples, self.steps = k, s
        self.noise: torch.Tensor | None = None  # (K, 1, M, d): the sampler's starting noise, when it runs
        with torch.no_grad():
            h, _ = model.encode(self.table.batch([0], self.device, drop))
            if model.denoiser is not None and not bool(self.present.all()):
                self.noise = model.case_noise(self.table.keys[:1], self.present[None], k, seed)
                self.hs = model.synthesize(h, self.present[None], self.noise, s)  # (K, 1, M, d)
                self.avail = torch.ones_like(self.present)
                self.syn = ~self.present
            else:
                self.hs = h[None]
                self.avail, self.syn = self.present, torch.zeros_like(self.present)
        self.h = h
        with torch.no_grad():
            self.probs = self.probs_from({})[0]
        self.target = int(self.probs.argmax())

    # ---- the common tail: latents → probabilities ------------------------------------------------------
    def probs_from(self, replace: dict[int, torch.Tensor], samples: torch.Tensor | None = None) -> torch.Tensor:
        """Class probabilities (B, C), averaged over the diffusion samples, with the latents of some present
        modalities replaced by `replace[i]` (B, d_h) and, when given, the synthesized slots taken from `samples`
        (B, K, M, d_h) instead of the prediction's; B is the largest batch among them."""
        b = max([len(v) for v in replace.values()] + ([len(samples)] if samples is not None else []), default=1)
        k, _, m, d = self.hs.shape
        h = self.hs.expand(k, b, m, d)
        if samples is not None:
            h = torch.where(self.syn[None, None, :, None], samples.transpose(0, 1).expand(k, b, m, d), h)
        if replace:
            slots = [h[:, :, i] if i not in replace else replace[i].unsqueeze(0).expand(k, b, d) for i in range(m)]
            h = torch.stack(slots, 2)
        avail = self.avail.expand(k, b, m)
        syn = self.syn.expand(k, b, m)
        z, _ = self.model.fuse(h, avail, syn)
        return self.model.probabilities(self.model.logits(z), self.present.expand(b, -1)).mean(0)

    @torch.no_grad()
    def synthesized_from(self, replace: dict[int, torch.Tensor]) -> torch.Tensor:
        """The K samples (1, K, M, d_h) the model synthesizes when present latents are replaced (1, d_h) each."""
        given = self.h.clone()
        for i, v in replace.items():
            given[:, i] = v
        return self.model.synthesize(given, self.present[None], self.noise, self.steps).transpose(0, 1)

    def integrate(self, i: int, encode: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor,
                  baselines: torch.Tensor, target: int, **ig: Any) -> IGResult:
        """Integrated Gradients of log p(target) over modality i's input (`encode`: input batch → latents (B, d_h)),
        from `baselines` to `inputs`, with the synthesized samples travelling along when something is missing
        (module docstring); `ig`: integrated_gradients' options (schedule, internal_batch_size)."""
        def f(x: torch.Tensor, s: torch.Tensor | None = None) -> torch.Tensor:
            return self.objective(self.probs_from({i: encode(x)}, s), target)

        if self.noise is None:
            return integrated_gradients(f, inputs, baselines, **ig)
        with torch.no_grad():
            at_baseline = self.synthesized_from({i: encode(baselines)})
        res = integrated_gradients(f, (inputs, self.hs.transpose(0, 1)), (baselines, at_baseline), **ig)
        direct, through = float(res.attributions[0].sum()), float(res.attributions[1].sum())
        share = abs(through) / max(abs(direct) + abs(through), 1e-12)
        return res._replace(attributions=res.attributions[0], through_synthesis=share)

    @torch.no_grad()
    def probs_without(self, i: int) -> torch.Tensor:
        """Probabilities when modality i is switched off too (then synthesized, as prediction would with
        the same per-case noise); computed from the latents already encoded, so no backbone runs again."""
        given = self.present.clone()
        given[i] = False
        if not bool(given.any()):
            return torch.full_like(self.probs, float("nan"))
        model = self.model
        noise = None if model.denoiser is None else model.case_noise(self.table.keys[:1], given[None], self.samples, self.seed)
        return model.sample_probabilities(self.h, given[None], noise, self.steps)[0].mean(0)[0]

    def prediction(self) -> Prediction:
        """The case's prediction from the features already computed (same result as Predictor.predict)."""
        drop = (~self.present).cpu().numpy()[None]
        return self.predictor.results([self.case], self.table, drop, seed=self.seed)[0]

    @staticmethod
    def objective(probs: torch.Tensor, target: int) -> torch.Tensor:
        """What input attributions explain: log p(target). Near-certain predictions saturate p itself, which
        would leave every pixel and word with a vanishing share."""
        return torch.log(probs[:, target].clamp_min(1e-12))

    # ---- inputs per modality type ---------------------------------------------------------------------
    def index(self, name: str) -> int:
        return self.names.index(name)

    def image_pixels(self, name: str) -> torch.Tensor:
        scan = self.case.inputs[name]
        assert isinstance(scan, Scan)
        return torch.as_tensor(image_input(scan, self.model.config.model), device=self.device)[None]

    def reads_pixels(self, name: str) -> bool:
        """True when the image encoder reads raw pixels (the ViT), False when it reads a backbone map."""
        return getattr(self.model.encoders[name], "input_kind", "") == "pixels"

    def image_backbone(self) -> ImageBackbone:
        return ImageBackbone(self.device, self.model.config.model.image_features)

    def probs_from_image(self, name: str, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, 1, S, S) in [0, 1] → probabilities (B, C)."""
        x = pixels if self.reads_pixels(name) else self.image_backbone()(pixels)
        return self.probs_from_image_map(name, x)

    def probs_from_image_map(self, name: str, fmap: torch.Tensor) -> torch.Tensor:
        """What the image encoder reads (B, C, g, g) (the backbone's map; pixels for the ViT) → probabilities."""
        return self.probs_from({self.index(name): self.model.encoders[name](fmap)})

    def note_chunks(self, name: str) -> NoteChunks:
        text = self.case.inputs[name]
        assert isinstance(text, str)
        mc = self.model.config.model
        return chunk_note(text, mc.text_max_tokens, mc.text_max_chunks, mc.note_negation, mc.note_units)

    def note_embeddings(self, chunks: NoteChunks) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings (1, n, L, 384) of the note, and of its IG baseline ([PAD] for every word token,
        [CLS]/[SEP] kept)."""
        emb = TextBackbone(self.device).word_embeddings
        ids = chunks.input_ids.to(self.device)
        tok = tokenizer()
        special = (ids == tok.cls_token_id) | (ids == tok.sep_token_id) | (chunks.attention_mask.to(self.device) == 0)
        base_ids = torch.where(special, ids, torch.zeros_like(ids))
        with torch.no_grad():
            return emb(ids)[None], emb(base_ids)[None]

    def note_latent(self, name: str, chunks: NoteChunks, embeds: torch.Tensor) -> torch.Tensor:
        """embeds (B, n, L, 384) → the note latent (B, d_h); each chunk's negation flag joins its pooled vector,
        as in the cached chunk rows."""
        pooled = TextBackbone(self.device).pooled_from_embeddings(embeds, chunks.attention_mask.to(self.device))
        flags = chunks.flags().to(device=self.device, dtype=pooled.dtype).expand(len(pooled), -1, -1)
        rows = torch.cat([pooled, flags], -1)
        valid = torch.ones(pooled.shape[:2], dtype=torch.bool, device=self.device)
        return self.model.encoders[name](rows, valid)

    def probs_from_note(self, name: str, chunks: NoteChunks, embeds: torch.Tensor) -> torch.Tensor:
        """embeds (B, n, L, 384) → probabilities (B, C)."""
        return self.probs_from({self.index(name): self.note_latent(name, chunks, embeds)})

    def lab_inputs(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised lab values (1, L) (0 where not measured) and the measured mask (1, L)."""
        panel = self.case.inputs[name]
        assert isinstance(panel, LabPanel)
        vals = torch.as_tensor(self.table.tabular[name][:1], device=self.device)
        enc = self.model.encoders[name]
        measured = ~torch.isnan(vals)
        z = torch.nan_to_num(enc.transform(torch.nan_to_num(vals, nan=0.0)), nan=0.0) * measured
        return z, measured

    def lab_latent(self, name: str, z: torch.Tensor, measured: torch.Tensor) -> torch.Tensor:
        """Standardised values (B, L) → the lab latent (B, d_h); unmeasured labs stay missing."""
        m = measured.expand_as(z)
        return self.model.encoders[name].mlp(torch.cat([z * m, (~m).to(z.dtype)], -1))

    def probs_from_labs(self, name: str, z: torch.Tensor, measured: torch.Tensor) -> torch.Tensor:
        """Standardised values (B, L) → probabilities (B, C)."""
        return self.probs_from({self.index(name): self.lab_latent(name, z, measured)})
