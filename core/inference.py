"""One facade for prediction, shared by the app, the command line, the evaluation and the benchmarks.

    predictor = Predictor.load()                     # the shipped default checkpoint, loaded once
    case = predictor.case(image="cxr.dcm", note="note.txt", labs="labs.csv")
    result = predictor.predict(case, absent=["labs"])  # switch a present modality off
    result.to_dict()  # prediction, probabilities, present, synthesized {modality: confidence...}, device, latency_ms

The diffusion sampler is seeded per call (`seed`), and every case starts from the same noise draws,
so the same inputs always give the same answer, alone or in a batch, from one thread or many.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from core.checkpoint import load_checkpoint
from core.data.dataset import CaseInputs, Modal
from core.data.readers import LabPanel, Scan, read_labs, read_note, read_scan
from core.data.readers.note import clean_note
from core.data.readers.source import Source
from core.data.spec import DatasetSpec
from core.errors import InputError, NoModalityError
from core.features import FeatureTable, table_from_inputs
from core.model.robustmdiff import RobustMDiff
from core.paths import DEFAULT_CHECKPOINT


def pick_device(device: str | torch.device | None = None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


@dataclass
class TableOutput:
    """Batch results: probabilities (N, C), and per modality (N, M) what synthesis did (NaN where given)."""

    probs: np.ndarray
    given: np.ndarray
    spread: np.ndarray
    confidence: np.ndarray
    expected_change: np.ndarray  # mean total-variation change of the answer over the samples of that modality
    info_gain: np.ndarray  # expected entropy reduction from acquiring it (mutual information, nats)


@torch.no_grad()
def predict_table(model: RobustMDiff, table: FeatureTable, idx: Iterable[int], drop: np.ndarray | None = None,
                  samples: int | None = None, steps: int | None = None, seed: int = 0, batch_size: int = 256,
                  device: torch.device | str = "cpu", value_of_information: bool = True) -> TableOutput:
    idx = np.asarray(list(idx))
    k = samples or model.config.diffusion.samples
    s = steps or model.config.diffusion.sample_steps
    m = len(model.info.modalities)
    outs: dict[str, list[np.ndarray]] = {n: [] for n in ("probs", "given", "spread", "conf", "change", "gain")}
    for start in range(0, len(idx), batch_size):
        rows = idx[start:start + batch_size]
        batch = table.batch(rows, device, None if drop is None else drop[start:start + batch_size])
        gen = torch.Generator(device=device).manual_seed(seed)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=torch.device(device).type == "cuda"):
            h, present = model.encode(batch)
            logits, hs = model.sample_logits(h.float(), present, k, s, gen)
        probs_k = torch.softmax(logits.float() / model.temperature, -1)
        probs = probs_k.mean(0)
        nan = torch.full((len(rows), m), float("nan"), device=probs.device)
        spread, conf, change, gain = nan.clone(), nan.clone(), nan.clone(), nan.clone()
        if hs is not None:
            hs = hs.float()
            missing = ~present
            sp = model.spread(hs)
            spread = torch.where(missing, sp, nan)
            conf = torch.where(missing, model.confidence(sp), nan)
            if value_of_information:
                change, gain = _value_of_information(model, hs, present, change, gain)
        for n, v in (("probs", probs), ("given", present), ("spread", spread), ("conf", conf), ("change", change),
                     ("gain", gain)):
            outs[n].append(v.cpu().numpy())
    cat = {n: np.concatenate(v) for n, v in outs.items()}
    return TableOutput(cat["probs"], cat["given"], cat["spread"], cat["conf"], cat["change"], cat["gain"])


def _value_of_information(model: RobustMDiff, hs: torch.Tensor, present: torch.Tensor, change: torch.Tensor,
                          gain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each missing modality: let only its latent vary over the K samples (others at their sample mean)
    and measure how much the answer moves (expected change) and how much uncertainty it would remove."""
    k = hs.shape[0]
    mean = hs.mean(0, keepdim=True)
    ones = torch.ones_like(present)
    for i in range(present.shape[1]):
        rows = ~present[:, i]
        if not rows.any():
            continue
        h = torch.where(present.unsqueeze(0).unsqueeze(-1), hs, mean.expand_as(hs)).clone()
        h[:, :, i] = hs[:, :, i]
        z, _ = model.fuse(h, ones.unsqueeze(0).expand(k, -1, -1), (~present).unsqueeze(0).expand(k, -1, -1))
        p = torch.softmax(model.logits(z) / model.temperature, -1)
        pbar = p.mean(0)
        tv = 0.5 * (p - pbar).abs().sum(-1).mean(0)
        mi = entropy(pbar) - entropy(p).mean(0)
        change[:, i] = torch.where(rows, tv, change[:, i])
        gain[:, i] = torch.where(rows, mi.clamp_min(0), gain[:, i])
    return change, gain


@dataclass
class Prediction:
    prediction: str
    probabilities: dict[str, float]
    present: list[str]
    synthesized: dict[str, dict[str, float]]
    device: str
    latency_ms: float
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def next_test(self) -> str | None:
        """The missing modality whose acquisition is expected to change the answer most."""
        if not self.synthesized:
            return None
        return max(self.synthesized, key=lambda n: self.synthesized[n]["expected_change"])


def absent_names(drop_row: np.ndarray, names: list[str]) -> set[str]:
    return {n for n, d in zip(names, drop_row) if d}


def _is_file(s: str) -> bool:
    """Whether a string names an existing file (a pasted note is text, however long)."""
    if "\n" in s or len(s) > 4096:
        return False
    try:
        return Path(s).is_file()
    except OSError:
        return False


class Predictor:
    """A loaded checkpoint with everything needed to read, predict and explain one case."""

    def __init__(self, model: RobustMDiff, meta: dict, device: torch.device):
        self.model, self.meta, self.device = model, meta, device
        self.spec = DatasetSpec.from_dict(meta["spec"])
        self.classes = list(model.info.classes)
        self.modalities = list(model.info.modalities)

    @classmethod
    def load(cls, checkpoint: str | Path | None = None, device: str | torch.device | None = None) -> "Predictor":
        dev = pick_device(device)
        model, meta = load_checkpoint(checkpoint or DEFAULT_CHECKPOINT, dev)
        return cls(model, meta, dev)

    # ---- inputs ----------------------------------------------------------------------------------------
    def modality_of_type(self, kind: str) -> str | None:
        return next((n for n, t in self.modalities if t == kind), None)

    def case(self, case_id: str = "case", **sources: Source | Modal | None) -> CaseInputs:
        """Read inputs by modality name (or by type: image=, note=/text=, labs=/tabular=). A str note that is
        not a path is taken as pasted text."""
        aliases = {"note": "text", "labs": "tabular"}
        inputs: dict[str, Modal | None] = {n: None for n, _ in self.modalities}
        for key, src in sources.items():
            if src is None:
                continue
            name = key if key in inputs else self.modality_of_type(aliases.get(key, key))
            if name is None:
                raise InputError(key, f"this model has no such modality; it reads {[n for n, _ in self.modalities]}")
            kind = dict(self.modalities)[name]
            inputs[name] = self._read(kind, name, src)
        return CaseInputs(case_id, inputs)

    def _read(self, kind: str, name: str, src: Source | Modal) -> Modal:
        if isinstance(src, (Scan, LabPanel)):
            return src
        if kind == "image":
            return read_scan(src)
        if kind == "text":
            if isinstance(src, str) and not _is_file(src):
                return clean_note(src, "pasted note")
            return read_note(src)
        return read_labs(src, self.spec.lab_features(name))

    # ---- prediction --------------------------------------------------------------------------------------
    def features(self, cases: list[CaseInputs]) -> FeatureTable:
        labs = {n: self.model.info.labs[n] for n, t in self.modalities if t == "tabular"}
        return table_from_inputs(cases, self.modalities, labs, self.model.config.model, self.device)

    def predict(self, case: CaseInputs, absent: Iterable[str] = (), samples: int | None = None,
                steps: int | None = None, seed: int = 0) -> Prediction:
        return self.predict_many([case], absent, samples, steps, seed)[0]

    def predict_many(self, cases: list[CaseInputs], absent: Iterable[str] = (), samples: int | None = None,
                     steps: int | None = None, seed: int = 0) -> list[Prediction]:
        t0 = time.perf_counter()
        absent = set(absent)
        unknown = absent - {n for n, _ in self.modalities}
        if unknown:
            raise InputError("absent", f"unknown modalities {sorted(unknown)}; this model reads "
                                       f"{[n for n, _ in self.modalities]}")
        names = [n for n, _ in self.modalities]
        drop = np.array([[n in absent for n in names]] * len(cases), bool)
        for c in cases:
            if not any(c.inputs.get(n) is not None and n not in absent for n in names):
                raise NoModalityError("no modality is present: give at least one of "
                                      f"{', '.join(names)} (refusing to guess from nothing)")
        return self.results(cases, self.features(cases), drop, samples, steps, seed, t0)

    def results(self, cases: list[CaseInputs], table: FeatureTable, drop: np.ndarray, samples: int | None = None,
                steps: int | None = None, seed: int = 0, t0: float | None = None) -> list[Prediction]:
        """Predictions for cases whose features are already computed (`drop`: modalities switched off)."""
        t0 = time.perf_counter() if t0 is None else t0
        names = [n for n, _ in self.modalities]
        out = predict_table(self.model, table, range(len(cases)), drop, samples, steps, seed, device=self.device)
        latency = (time.perf_counter() - t0) * 1000 / len(cases)
        results = []
        for r, c in enumerate(cases):
            probs = {cl: float(p) for cl, p in zip(self.classes, out.probs[r])}
            syn = {names[j]: {"confidence": float(out.confidence[r, j]), "spread": float(out.spread[r, j]),
                              "expected_change": float(out.expected_change[r, j]),
                              "expected_information_gain": float(out.info_gain[r, j])}
                   for j in range(len(names)) if not out.given[r, j]}
            warnings = [f"{n}: {w}" for n, v in c.inputs.items() if n not in absent_names(drop[r], names)
                        for w in (v.warnings if isinstance(v, LabPanel) else v.notes if isinstance(v, Scan) else [])]
            results.append(Prediction(prediction=self.classes[int(out.probs[r].argmax())], probabilities=probs,
                                      present=[names[j] for j in range(len(names)) if out.given[r, j]], synthesized=syn,
                                      device=str(self.device), latency_ms=latency, warnings=warnings))
        return results
