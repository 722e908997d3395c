"""Early stopping: how an epoch is scored on validation (natural missingness, and every modality hidden at one
rate for every method), and the rule that keeps the best epoch's weights."""

from __future__ import annotations

import copy

import numpy as np
import torch

from core.evaluation.metrics import macro_auroc
from core.features import FeatureTable
from core.inference import encode_table, predict_table
from core.model.robustmdiff import RobustMDiff


def validation_drops(present: np.ndarray, p: float, seed: int) -> list[np.ndarray | None]:
    """Natural missingness, and the same with each present modality hidden with probability p (fixed draw)."""
    rng = np.random.default_rng(seed)
    drop = (rng.random(present.shape) < p) & present
    all_gone = ~(present & ~drop).any(1)
    drop[all_gone] = False
    return [None, drop]


def nll(y: np.ndarray, probs: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None))))


def validation_scores(model: RobustMDiff, table: FeatureTable, va: np.ndarray, y: np.ndarray, drops,
                      device) -> tuple[list[float], float]:
    """Validation macro AUROC per drop mask, and the mean log loss over them (the tie-breaker)."""
    model.eval()
    probs = [predict_table(model, table, va, d, samples=4, device=device, describe=False).probs for d in drops]
    return [macro_auroc(y, p) for p in probs], float(np.mean([nll(y, p) for p in probs]))


# AUROC differences below this are noise on a few hundred validation cases (and an easy task saturates
# at 1.0): within it of the best AUROC seen, the epoch with the lower validation loss is kept, so that a
# saturated or noisy score no longer pins the choice to the first epoch.
AUROC_TIE = 0.002


class Best:
    """Early stopping on validation AUROC (ties within AUROC_TIE broken by validation loss), keeping the
    best weights."""

    def __init__(self, model: RobustMDiff, patience: int):
        self.model, self.patience = model, patience
        self.score, self.state, self.epoch, self.waited = -np.inf, copy.deepcopy(model.state_dict()), -1, 0
        self.top, self.loss = -np.inf, np.inf

    def update(self, score: float, epoch: int, loss: float = np.inf) -> bool:
        """Record an epoch; True when training should stop."""
        better = score > self.top + AUROC_TIE or (score >= self.top - AUROC_TIE and loss < self.loss) \
            or (score > self.score and loss <= self.loss)
        self.top = max(self.top, score)
        if better:
            self.score, self.loss, self.epoch, self.waited = score, loss, epoch, 0
            self.state = copy.deepcopy(self.model.state_dict())
            return False
        self.waited += 1
        return self.waited >= self.patience

    def restore(self) -> None:
        self.model.load_state_dict(self.state)


def validation_scores_without_synthesis(model: RobustMDiff, table: FeatureTable, va: np.ndarray, y: np.ndarray,
                                        drops, device) -> tuple[list[float], float]:
    """Phase-1 validation: hidden modalities left out (the denoiser is not ready to fill them yet)."""
    model.eval()
    probs = []
    with torch.no_grad():
        for d in drops:
            h, present = encode_table(model, table, va, device, d)
            z, _ = model.fuse(h, present)
            probs.append(torch.softmax(model.logits(z).float(), -1).cpu().numpy())
    return [macro_auroc(y, p) for p in probs], float(np.mean([nll(y, p) for p in probs]))
