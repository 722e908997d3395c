"""The methods compared by the evaluation: baselines from the seeds and RobustMDiff's ablations.

One training recipe for every method (issue 28). Every method is a variant of one configuration, trained
by the same harness (`core/evaluation/harness.py` → `core/training.py`: one `train_model` call per method
and seed, each seed trained fresh, none reused) on the same cached encoder features. What every method
shares: the epochs, batch size, learning rate, early stopping on validation macro AUROC (`patience`), the
calibration on the validation split, and plain class balancing: every class weighted
(f_max / f_c)^balance_gamma with the configuration's `balance_gamma` (not one of RobustMDiff's devices).

RobustMDiff's own devices, which baselines do not get:
  - diffusion restoration of missing latents (`diffusion.enabled`, with its phases 2 and 3);
  - knowledge-enhanced attention (`model.use_knowledge`, the `knowledge` fusion);
  - curriculum masking (`training.curriculum`; a baseline masks at its own fixed rate p, 0 for most);
  - the consistency loss (`training.lambda_cons`);
  - rare-disease sampling: the spec's rare classes weighted with `rare_gamma` instead of `balance_gamma`.
    A baseline gives rare classes the same rule as every other class (rare_gamma = balance_gamma).
Each ablation (no_diffusion, no_knowledge, no_curriculum, no_consistency, no_rare_sampling) removes exactly
one of them; no_rare_sampling sets rare_gamma to balance_gamma, and class balancing stays.
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


def without_rare_sampling(c: Config) -> Config:
    """Rare classes weighted as every other class: the configuration's class balancing, nothing more."""
    return c.override("training", rare_gamma=c.training.balance_gamma)


def _baseline(fusion: str, p: float) -> Callable[[Config], Config]:
    """A baseline: its fusion and fixed masking rate p, none of RobustMDiff's devices, the shared recipe."""
    def change(c: Config) -> Config:
        c = c.override("model", fusion=fusion).override("diffusion", enabled=False)
        return without_rare_sampling(c.override("training", curriculum=False, p_min=p, p_max=p, lambda_cons=0.0))
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
        Method("no_rare_sampling", "ablation", without_rare_sampling),
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
