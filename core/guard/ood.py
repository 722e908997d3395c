"""Out-of-distribution scores: how unlike the training data each present input is.

One density model per modality, in the space the model itself reads, fitted on the training split:
- images: the frozen backbone's feature map averaged over positions (pixels pooled to 16×16 for the ViT);
- notes: the sentence embeddings of the note's chunks, averaged;
- labs: the values log-transformed and standardised as the lab encoder does.
Images and notes get a probabilistic PCA (the k leading directions with their own variances, the rest one
shared variance); the score is the Mahalanobis distance per dimension, about 1 for a typical training
input. Labs get a Gaussian with a shrunk correlation, evaluated on the labs that were measured only; the
score is -log10 of a tail probability, so that 3 labs and 16 labs share one scale: the smaller of the joint
chi-square tail (an unusual combination) and the most extreme single lab's two-sided normal tail times the
number of labs measured (one absurd value is not diluted by a dozen ordinary ones).

Each threshold is the (1 - FALSE_ALARM) quantile of held-out scores: the validation inputs scored by the
final model plus every training input scored by a model fitted without it (FOLDS-fold cross-fitting). A
few hundred validation inputs alone put a 99th percentile on their 4th-largest score, which moved the
test split's false alarms to 3 %; with the held-out training scores added it rests on thousands.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import chi2, norm

from core.features import FeatureTable
from core.model.backbones import TEXT_DIM

if TYPE_CHECKING:
    from core.data.dataset import Dataset

FALSE_ALARM = 0.01  # share of validation inputs flagged, by construction
MAX_COMPONENTS = 64  # principal directions kept per modality (at most a fifth of the training inputs)
FOLDS = 5  # cross-fitting folds for held-out training scores
PIXEL_GRID = 16  # pixels-in models (ViT): the image pooled to this grid first
SHRINK = 0.1  # lab correlation shrunk this far toward the identity (stable with few complete cases)


def image_vectors(table: FeatureTable, name: str, rows: np.ndarray) -> np.ndarray:
    """(n, D) pooled image features: the backbone map averaged over positions, or pooled pixels."""
    x = np.asarray(table.image[name][rows], dtype=np.float32)
    if x.shape[1] > 1:  # (n, C, h, w) backbone map
        return x.mean(axis=(2, 3))
    pooled = F.adaptive_avg_pool2d(torch.from_numpy(x), PIXEL_GRID)
    return pooled.flatten(1).numpy()


def text_vectors(table: FeatureTable, name: str, rows: np.ndarray) -> np.ndarray:
    """(n, 384) mean chunk embedding of each note (NaN rows where there is no note); the chunks' negation
    flags (the last column of a cached chunk row) are left out."""
    out = np.full((len(rows), TEXT_DIM), np.nan, np.float32)
    for r, i in enumerate(rows):
        chunks = table.text[name][i]
        if len(chunks):
            out[r] = np.asarray(chunks[:, :TEXT_DIM], np.float32).mean(0)
    return out


@dataclass
class Subspace:
    """Probabilistic PCA around class means (Lee et al. 2018's class-conditional Mahalanobis detector with a
    shared covariance): k directions with their variances, one variance for the remaining D - k; an input
    is scored against its nearest class."""

    mean: np.ndarray  # (C, D)
    basis: np.ndarray  # (k, D)
    variance: np.ndarray  # (k,)
    rest: float

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray) -> "Subspace":
        x = np.asarray(x, np.float64)
        n, d = x.shape
        mean = _class_means(x, y)
        xc = x - mean[_class_index(y)]
        _, s, vt = np.linalg.svd(xc, full_matrices=False)
        eig = s ** 2 / max(n - 1, 1)
        k = int(max(1, min(MAX_COMPONENTS, n // 5, d - 1)))
        total = float((xc ** 2).sum() / max(n - 1, 1))
        rest = max((total - eig[:k].sum()) / max(d - k, 1), 1e-12)
        return cls(mean, vt[:k], np.maximum(eig[:k], rest), float(rest))

    def score(self, x: np.ndarray) -> np.ndarray:
        xc = np.asarray(x, np.float64)[:, None, :] - self.mean[None]  # (n, C, D)
        z = xc @ self.basis.T
        resid = np.maximum((xc ** 2).sum(-1) - (z ** 2).sum(-1), 0.0)
        d2 = (z ** 2 / self.variance).sum(-1) + resid / self.rest
        return np.sqrt(d2.min(1) / xc.shape[-1])

    def state(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "basis": self.basis, "variance": self.variance, "rest": np.array([self.rest])}

    @classmethod
    def from_state(cls, s: dict[str, np.ndarray]) -> "Subspace":
        return cls(s["mean"], s["basis"], s["variance"], float(s["rest"][0]))


@dataclass
class LabGaussian:
    """A Gaussian over standardised (log where the catalogue says so) lab values, scored on measured labs."""

    log: np.ndarray  # (L,) bool
    mean: np.ndarray  # (C, L) class means of the transformed values
    std: np.ndarray  # (L,) within-class spread
    corr: np.ndarray  # (L, L) shrunk within-class correlation

    def standardise(self, values: np.ndarray) -> np.ndarray:
        """(n, C, L) deviations from each class mean in within-class SDs."""
        v = np.asarray(values, np.float64)
        v = np.where(self.log, np.log1p(np.clip(v, 0, None)), v)
        return (v[:, None, :] - self.mean[None]) / self.std

    @classmethod
    def fit(cls, values: np.ndarray, y: np.ndarray, log: np.ndarray) -> "LabGaussian":
        v = np.asarray(values, np.float64)
        t = np.where(log, np.log1p(np.clip(v, 0, None)), v)
        mean = _class_means(t, y)  # NaN for a lab no case measured: it has no typical value and is never scored
        r = t - mean[_class_index(y)]
        std = np.nan_to_num(np.sqrt(_nanmean(r ** 2)), nan=1.0)
        std = np.where(std > 1e-6, std, 1.0)
        z = r / std
        n = len(z)
        n_labs = t.shape[1]
        corr = np.eye(n_labs)
        for a in range(n_labs):  # pairwise over the cases that measured both labs
            for b in range(a + 1, n_labs):
                both = ~np.isnan(z[:, a]) & ~np.isnan(z[:, b])
                if both.sum() >= max(10, n // 100):
                    corr[a, b] = corr[b, a] = float(np.mean(z[both, a] * z[both, b]))
        corr = (1 - SHRINK) * corr + SHRINK * np.eye(n_labs)
        w, v = np.linalg.eigh(corr)  # pairwise estimates need not be positive definite
        corr = (v * np.maximum(w, 1e-3)) @ v.T
        return cls(np.asarray(log, bool), mean, std, corr)

    def _scores(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n,) scores against the nearest class, and (n,) which class that is."""
        z = self.standardise(values)
        out, nearest = np.full(len(z), np.nan), np.zeros(len(z), int)
        for r, rows in enumerate(z):
            seen = ~np.isnan(rows[0])
            if not seen.any():
                continue
            zo = rows[:, seen]  # (C, L_o)
            d2 = np.einsum("cl,cl->c", zo, np.linalg.solve(self.corr[np.ix_(seen, seen)], zo.T).T)
            joint = chi2.logsf(d2, seen.sum())
            single = np.log(seen.sum()) + np.log(2) + norm.logsf(np.abs(zo).max(1))  # Bonferroni over the labs
            per_class = -np.minimum(joint, single) / np.log(10)
            nearest[r] = int(per_class.argmin())
            out[r] = per_class[nearest[r]]
        return out, nearest

    def score(self, values: np.ndarray) -> np.ndarray:
        return self._scores(values)[0]

    def deviations(self, values: np.ndarray) -> np.ndarray:
        """(n, L) standardised deviation of each measured lab from its nearest class (NaN where not measured)."""
        _, nearest = self._scores(values)
        return self.standardise(values)[np.arange(len(nearest)), nearest]

    def state(self) -> dict[str, np.ndarray]:
        return {"log": self.log.astype(np.float64), "mean": self.mean, "std": self.std, "corr": self.corr}

    @classmethod
    def from_state(cls, s: dict[str, np.ndarray]) -> "LabGaussian":
        return cls(s["log"] > 0.5, s["mean"], s["std"], s["corr"])


@dataclass
class Guard:
    """Per modality: its density model and threshold; `val_flagged` and `test_flagged` are the shares of the
    validation and test inputs flagged (the test share is the false-alarm rate a user meets)."""

    kinds: dict[str, str]
    models: dict[str, Subspace | LabGaussian]
    thresholds: dict[str, float]
    val_flagged: dict[str, float] = field(default_factory=dict)
    lab_names: dict[str, list[str]] = field(default_factory=dict)
    test_flagged: dict[str, float] = field(default_factory=dict)

    # ---- scores ------------------------------------------------------------------------------------
    def scores(self, table: FeatureTable, rows: np.ndarray | list[int]) -> dict[str, np.ndarray]:
        """Per modality, (n,) scores of rows `rows` (NaN where the modality is absent)."""
        rows = np.asarray(rows)
        out = {}
        for j, (name, kind) in enumerate(table.modalities):
            if name not in self.models:
                continue
            present = table.present[rows, j]
            s = np.full(len(rows), np.nan)
            if present.any():
                s[present] = self.models[name].score(_vectors(table, name, kind, rows[present]))
            out[name] = s
        return out

    def flag_rates(self, table: FeatureTable, rows: np.ndarray) -> dict[str, float]:
        """Per modality, the share of the rows that have it whose score is above the threshold."""
        out = {}
        for name, s in self.scores(table, rows).items():
            s = s[~np.isnan(s)]
            out[name] = float(np.mean(s > self.thresholds[name])) if len(s) else float("nan")
        return out

    def assess(self, table: FeatureTable, row: int) -> dict[str, dict]:
        """One case: {modality: {score, threshold, flagged, reason}} for each present modality."""
        out = {}
        for name, s in self.scores(table, [row]).items():
            score = float(s[0])
            if np.isnan(score):
                continue
            flagged = score > self.thresholds[name]
            out[name] = {"score": round(score, 3), "threshold": round(self.thresholds[name], 3), "flagged": bool(flagged),
                         "reason": self.reason(table, row, name, score) if flagged else ""}
        return out

    def reason(self, table: FeatureTable, row: int, name: str, score: float) -> str:
        kind = self.kinds[name]
        ratio = f"score {score:.2f}, above the {1 - FALSE_ALARM:.0%} of validation {kind} inputs below {self.thresholds[name]:.2f}"
        if kind == "image":
            return f"the scan looks unlike every training scan to the image encoder ({ratio})"
        if kind == "text":
            return f"the note reads unlike the training notes to the text encoder ({ratio})"
        model = self.models[name]
        assert isinstance(model, LabGaussian)
        z = model.deviations(table.tabular[name][[row]])[0]
        names = self.lab_names.get(name, [str(i) for i in range(len(z))])
        top = [i for i in np.argsort(-np.nan_to_num(np.abs(z), nan=-1)) if np.isfinite(z[i])][:3]
        worst = ", ".join(f"{names[i]} {z[i]:+.1f} SD" for i in top if abs(z[i]) >= 2)
        combo = f"most unusual: {worst}" if worst else "each value is ordinary, their combination is not"
        return f"this combination of lab values is rarer than in any training case ({combo}; {ratio})"

    # ---- storage ------------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"{name}/{k}": torch.as_tensor(np.asarray(v, np.float64)) for name, m in self.models.items()
                for k, v in m.state().items()}

    def describe(self) -> dict:
        """What goes into meta.json beside the tensors."""
        return {"kinds": self.kinds, "thresholds": self.thresholds, "val_flagged": self.val_flagged,
                "test_flagged": self.test_flagged, "lab_names": self.lab_names, "false_alarm": FALSE_ALARM}

    @classmethod
    def from_storage(cls, info: dict, tensors: dict[str, torch.Tensor]) -> "Guard":
        models: dict[str, Subspace | LabGaussian] = {}
        for name, kind in info["kinds"].items():
            state = {k.split("/", 1)[1]: v.numpy() for k, v in tensors.items() if k.split("/", 1)[0] == name}
            models[name] = LabGaussian.from_state(state) if kind == "tabular" else Subspace.from_state(state)
        return cls(dict(info["kinds"]), models, {k: float(v) for k, v in info["thresholds"].items()},
                   dict(info.get("val_flagged", {})), {k: list(v) for k, v in info.get("lab_names", {}).items()},
                   dict(info.get("test_flagged", {})))


def _vectors(table: FeatureTable, name: str, kind: str, rows: np.ndarray) -> np.ndarray:
    if kind == "image":
        return image_vectors(table, name, rows)
    if kind == "text":
        return text_vectors(table, name, rows)
    return np.asarray(table.tabular[name][rows], np.float64)


def _class_index(y: np.ndarray) -> np.ndarray:
    return np.unique(y, return_inverse=True)[1]


def _nanmean(x: np.ndarray) -> np.ndarray:
    """Column means over the values present, NaN for a column without any (numpy's nanmean would warn)."""
    n = (~np.isnan(x)).sum(0)
    total = np.nansum(x, 0)
    return np.divide(total, n, out=np.full(total.shape, np.nan), where=n > 0)


def _class_means(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(C, D) per-class means over the values present. A class without values for a feature takes the overall
    mean; a feature without any value (a lab no case measured, e.g. in one fold of the cross-fitting) stays
    NaN, so that scoring leaves it out instead of measuring values against an invented mean."""
    idx = _class_index(y)
    overall = _nanmean(x)
    out = np.empty((idx.max() + 1, x.shape[1]))
    for c in range(len(out)):
        m = _nanmean(x[idx == c]) if np.any(idx == c) else overall
        out[c] = np.where(np.isnan(m), overall, m)
    return out


def _fit(kind: str, x: np.ndarray, y: np.ndarray, labs: list | None) -> Subspace | LabGaussian:
    if kind == "tabular":
        return LabGaussian.fit(x, y, np.array([lab.log for lab in labs or []], bool))
    return Subspace.fit(x, y)


def held_out_scores(kind: str, x: np.ndarray, y: np.ndarray, labs: list | None, seed: int = 0) -> np.ndarray:
    """Each row scored by a model fitted on the other folds."""
    folds = np.random.default_rng(seed).permutation(len(x)) % FOLDS
    out = np.empty(len(x))
    for f in range(FOLDS):
        out[folds == f] = _fit(kind, x[folds != f], y[folds != f], labs).score(x[folds == f])
    return out


def fit_guard(table: FeatureTable, labels: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray,
              lab_catalogues: dict[str, list]) -> Guard:
    """Fit every modality's density on the training rows that have it (around the class means of `labels`),
    its threshold on held-out scores (validation + cross-fitted training). `lab_catalogues`: per tabular
    modality, its LabSpec list."""
    kinds, models, thresholds, flagged, lab_names = {}, {}, {}, {}, {}
    for j, (name, kind) in enumerate(table.modalities):
        tr = train_idx[table.present[train_idx, j]]
        va = val_idx[table.present[val_idx, j]]
        if len(tr) < 10 * FOLDS or len(va) < 10:
            continue  # too few inputs to say what is typical
        labs = lab_catalogues.get(name)
        x = _vectors(table, name, kind, tr)
        models[name] = _fit(kind, x, labels[tr], labs)
        kinds[name] = kind
        if labs is not None:
            lab_names[name] = [lab.label for lab in labs]
        val = models[name].score(_vectors(table, name, kind, va))
        thresholds[name] = float(np.quantile(np.concatenate([val, held_out_scores(kind, x, labels[tr], labs)]), 1 - FALSE_ALARM))
        flagged[name] = float(np.mean(val > thresholds[name]))
    return Guard(kinds, models, thresholds, flagged, lab_names)


def fit_data_guard(ds: Dataset, table: FeatureTable) -> Guard:
    """The guard of a model trained on `ds` (its training and validation splits), with its false-alarm rates on
    the test split. A lab that no training case measured has no typical value, so the guard leaves it out of
    every score (training says so once, in words: core.features.unmeasured_labs)."""
    catalogues = {n: ds.spec.lab_features(n) for n, k in table.modalities if k == "tabular"}
    guard = fit_guard(table, ds.labels, ds.indices("train"), ds.indices("val"), catalogues)
    guard.test_flagged = guard.flag_rates(table, ds.indices("test"))
    return guard
