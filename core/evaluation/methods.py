"""The methods compared by the evaluation: baselines from the seeds and RobustMDiff's ablations.

Every method is a variant of one configuration, trained by the same harness (`core/training.py`) on the
same cached encoder features, so that only the way missing modalities are handled differs. Baselines do
not get RobustMDiff's own training devices (curriculum, consistency, rare-disease sampling).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from core.model.config import Config
from core.names import display_name


@dataclass(frozen=True)
class Method:
    name: str
    kind: str  # single | baseline | robustmdiff | ablation
    change: Callable[[Config], Config]
    only: str | None = None  # single-modality methods: the modality they read

    @property
    def label(self) -> str:
        """The words shown for it: from core.names, the one mapping of display names."""
        return display_name(self.name)


def _baseline(fusion: str, p: float) -> Callable[[Config], Config]:
    def change(c: Config) -> Config:
        c = c.override("model", fusion=fusion).override("diffusion", enabled=False)
        return c.override("training", curriculum=False, p_min=p, p_max=p, lambda_cons=0.0, rare_gamma=0.0, balance_gamma=0.0)
    return change


def _must_style(c: Config) -> Config:
    """A MUST-style generative baseline: latent diffusion restores the missing modalities, sampled as MUST
    does (50 DDIM steps, 5 samples averaged), and the completed latents are fused early. It shares the
    harness's diffusion training (the classifier tuned on synthesized latents, calibration) but none of
    RobustMDiff's own devices (knowledge attention, curriculum, consistency, rare-disease sampling)."""
    c = _baseline("early_zero", 0.3)(c)
    return c.override("diffusion", enabled=True, sample_steps=50, samples=5)


def methods_for(modalities: list[str]) -> list[Method]:
    """All methods, in table order, for a data set with these modalities."""
    single = [Method(f"single_{m}", "single", _baseline("knowledge", 0.0), only=m) for m in modalities]
    return single + [
        Method("early_zero", "baseline", _baseline("early_zero", 0.0)),
        Method("early_mean", "baseline", _baseline("early_mean", 0.0)),
        Method("missing_token", "baseline", _baseline("early_token", 0.0)),
        Method("dropout_0.3", "baseline", _baseline("early_zero", 0.3)),
        Method("dropout_0.5", "baseline", _baseline("early_zero", 0.5)),
        Method("late_fusion", "baseline", _baseline("late", 0.0)),
        Method("masked_attention", "baseline", _baseline("masked_attention", 0.3)),
        Method("must_style", "baseline", _must_style),
        Method("robustmdiff", "robustmdiff", lambda c: c),
        Method("no_diffusion", "ablation", lambda c: c.override("diffusion", enabled=False)),
        Method("no_knowledge", "ablation", lambda c: c.override("model", use_knowledge=False)),
        Method("no_curriculum", "ablation", lambda c: c.override("training", curriculum=False)),
        Method("no_consistency", "ablation", lambda c: c.override("training", lambda_cons=0.0)),
        Method("no_rare_sampling", "ablation", lambda c: c.override("training", rare_gamma=0.0, balance_gamma=0.0)),
    ]


def select(methods: list[Method], spec: str) -> list[Method]:
    """'all', or a comma-separated list of names (robustmdiff is always included: it is the reference)."""
    if spec in ("", "all"):
        return methods
    wanted = {s.strip() for s in spec.split(",") if s.strip()} | {"robustmdiff"}
    unknown = wanted - {m.name for m in methods}
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {[m.name for m in methods]}")
    return [m for m in methods if m.name in wanted]
