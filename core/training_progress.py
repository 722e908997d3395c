"""How far a training is, as one fraction that moves about evenly in time (for the Robustness lab's quick
evaluation and any caller of `train_model(on_progress=...)`)."""

from __future__ import annotations

from collections.abc import Callable

# Rough cost of each step in phase-1 epochs (2-core CPU, quick cohort), so that the fraction `on_progress`
# reports moves about evenly in time: a denoiser epoch is cheap, a phase-3 epoch samples latents, and the
# calibration predicts every validation case from every subset of its modalities.
COST = {"phase2_epoch": 0.4, "phase3_epoch": 2.5, "calibration": 1.0, "calibration_diffusion": 30.0}


class TrainingProgress:
    """Reports (fraction of the whole training, what it is doing) to an optional callback."""

    def __init__(self, on: Callable[[float, str], None] | None, tc, diffusion: bool):
        self.on, self.done = on, 0.0
        self.total = tc.epochs + (COST["calibration_diffusion"] if diffusion else COST["calibration"])
        if diffusion:
            self.total += COST["phase2_epoch"] * tc.diffusion_epochs + COST["phase3_epoch"] * tc.finetune_epochs
        self.phases = 3 if diffusion else 1

    def __call__(self, cost: float, text: str) -> None:
        """`cost` more units are done (0 to only say what starts)."""
        self.done = min(self.total, self.done + cost)
        if self.on:
            self.on(self.done / self.total, text)

    def skip_to(self, units: float, text: str) -> None:  # early stopping: the epochs not run count as done
        self.done = max(self.done, units)
        self(0, text)

    def rest(self, prefix: str = "") -> Callable[[float, str], None]:
        """A callback for the last step (the calibration): its own fraction spread over what remains."""
        start, units = self.done, self.total - self.done
        return lambda f, text: self.skip_to(start + f * units, prefix + text)
