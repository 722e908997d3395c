"""Configuration as dataclasses with the defaults of `configs/default.yaml` (which documents each entry)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from core.errors import RobustMDiffError


@dataclass(frozen=True)
class ModelConfig:
    d_h: int = 128
    image_encoder: str = "efficientnet"
    image_features: str = "stride16"
    image_size: int = 128
    vit_patch: int = 16
    vit_depth: int = 4
    text_max_tokens: int = 128
    text_max_chunks: int = 256
    lab_hidden: int = 128
    d_k: int = 64
    knowledge_graph: str = "assets/knowledge_graph.yaml"
    relevance_gamma: float = 0.5
    use_knowledge: bool = True
    fusion: str = "knowledge"
    head_hidden: int = 128
    dropout: float = 0.1
    note_negation: bool = True  # negated words of a note in chunks of their own, flagged (core/model/negation.py)
    # how the text head reads a chunk of negated words: "separate" (a projection of its own, so a negated finding
    # can mean the opposite of the finding) or "shift" (the affirmed projection plus a learned vector)
    negation_head: str = "separate"
    note_units: str = "clause"  # what a note chunk holds: "clause" or "sentence" (core/model/backbones.chunk_note)


@dataclass(frozen=True)
class DiffusionConfig:
    enabled: bool = True
    train_steps: int = 1000
    beta_schedule: str = "cosine"
    prediction: str = "v"
    sample_steps: int = 3
    samples: int = 40
    denoiser_width: int = 256
    denoiser_depth: int = 3
    denoiser_heads: int = 4
    train_sample_steps: int = 5


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 40
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 15
    diffusion_epochs: int = 150
    finetune_epochs: int = 30
    finetune_lr: float = 3e-4
    p_min: float = 0.1
    p_max: float = 0.6
    val_mask: float = 0.6  # validation's second view hides each modality with this probability, for every method
    calibrator: str = "pattern+bias"  # the temperature calibrator's form (core/calibration/temperature.FORMS)
    curriculum_ratio: float = 0.5
    curriculum: bool = True
    rare_gamma: float = 0.5
    balance_gamma: float = 0.0
    lambda_cons: float = 0.5
    lambda_diff: float = 1.0
    lambda_cls: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Config":
        d = d or {}
        unknown = set(d) - {"model", "diffusion", "training"}
        if unknown:
            raise RobustMDiffError(f"config: unknown sections {sorted(unknown)}; use model, diffusion, training")
        parts = {}
        for name, klass in (("model", ModelConfig), ("diffusion", DiffusionConfig), ("training", TrainingConfig)):
            section = d.get(name) or {}
            names = {f.name: f.type for f in fields(klass)}
            bad = set(section) - set(names)
            if bad:
                raise RobustMDiffError(f"config: unknown {name} entries {sorted(bad)}")
            parts[name] = klass(**section)
        return cls(**parts)

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        try:
            return cls.from_dict(yaml.safe_load(Path(path).read_text(encoding="utf-8")))
        except OSError as e:
            raise RobustMDiffError(f"config {Path(path).name}: cannot be read ({e.strerror})") from None
        except (yaml.YAMLError, TypeError) as e:
            raise RobustMDiffError(f"config {Path(path).name}: invalid ({str(e).splitlines()[0]})") from None

    def override(self, section: str, **changes: Any) -> "Config":
        return replace(self, **{section: replace(getattr(self, section), **changes)})


# --quick (train, evaluate): the short schedule; `train --help` gives measured times and what they depend on.
QUICK_TRAINING = {"epochs": 6, "diffusion_epochs": 20, "finetune_epochs": 3, "patience": 3}
# `train --quick` also draws fewer diffusion samples per prediction (K): after the epochs, the test metrics under
# every availability pattern, the calibration and its report predict every validation and test case from every
# subset of its modalities, K samples each, and that cost grows with K. 8 samples keep the synthesis confidence
# within about 0.05 across sampler seeds (40: 0.03; configs/default.yaml), enough for a smoke-test model. The
# checkpoint's config records it, and its predictions in the app use it too.
QUICK_SAMPLING = {"samples": 8}


def quick(config: Config, sampling: bool = False) -> Config:
    """The short training schedule; with `sampling`, also the fewer diffusion samples of `train --quick` (the
    evaluation's --quick keeps the configured K, so that its figures stay comparable)."""
    config = config.override("training", **QUICK_TRAINING)
    return config.override("diffusion", **QUICK_SAMPLING) if sampling else config
