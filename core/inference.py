"""One facade for prediction, shared by the app, the command line, the evaluation and the benchmarks.

    predictor = Predictor.load()                     # the shipped default checkpoint, loaded once
    case = predictor.case(image="cxr.dcm", note="note.txt", labs="labs.csv")
    result = predictor.predict(case, absent=["labs"])  # switch a present modality off
    result.to_dict()  # prediction, probabilities, present, synthesized {modality: confidence...}, ood, device, latency_ms

Every present input is scored against the training data (core/guard): `result.ood[modality]` says how unlike
it is and whether that is beyond the checkpoint's threshold, and a scan whose DICOM header contradicts what
the model was trained on is refused unless `allow_domain_mismatch=True` (then `result.domain` says why).

The diffusion sampler draws each case's noise from a hash of that case's inputs and the sampler `seed`,
so the same inputs always give the same answer, alone or in a batch, from one thread or many.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterable

import numpy as np
import torch

from core.checkpoint import load_checkpoint, load_guard
from core.data.dataset import CaseInputs, Modal
from core.data.readers import LabPanel, Scan, read_labs, read_note, read_scan
from core.data.readers.note import clean_note
from core.data.readers.source import Source
from core.data.spec import DatasetSpec, LabSpec
from core.device import model_device, pick_device
from core.errors import InputError, NoModalityError, RobustMDiffError
from core.features import FeatureTable, table_from_inputs
from core.guard.domain import DomainError, domain_mismatches
from core.guard.ood import Guard
from core.model.knowledge import KnowledgeGraph
from core.model.robustmdiff import SIGNALS, RobustMDiff, entropy
from core.paths import DEFAULT_CHECKPOINT, ROOT
from core.prediction import Prediction, next_test_evidence


@dataclass
class TableOutput:
    """Batch results: probabilities (N, C), and per modality (N, M) what synthesis did (NaN where given).

    `signals` (N, M, F) is what the confidence model read; `assumed` holds, for each tabular modality, the
    standardised median, low and high (N, L) of the values its synthesized latent implies (NaN where given);
    `concepts` (N, M, k) the knowledge-attention lift of each synthesized latent over its training average."""

    probs: np.ndarray
    given: np.ndarray
    spread: np.ndarray
    confidence: np.ndarray
    expected_change: np.ndarray  # mean total-variation change of the answer over the samples of that modality
    info_gain: np.ndarray  # expected entropy reduction from acquiring it (mutual information, nats)
    decision_change: np.ndarray  # share of the samples of that modality whose predicted class differs from the answer
    signals: np.ndarray
    sample_probs: np.ndarray  # (K, N, C) per diffusion sample (K copies where nothing was synthesized)
    assumed: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    concepts: np.ndarray | None = None


@torch.no_grad()
def predict_table(model: RobustMDiff, table: FeatureTable, idx: Iterable[int], drop: np.ndarray | None = None,
                  samples: int | None = None, steps: int | None = None, seed: int = 0, batch_size: int = 256,
                  device: torch.device | str | None = None, describe: bool = True,
                  on_batch: Callable[[int, int], None] | None = None) -> TableOutput:
    """Predict rows `idx` of a feature table with the modalities in `drop` switched off. With `describe`, each
    synthesized modality also gets its confidence, value of information, assumed lab values and concepts
    (the evaluation, which needs only probabilities, skips them). `on_batch(rows done, rows)` after each batch."""
    idx = np.asarray(list(idx))
    device = model_device(model) if device is None else device
    k = samples or model.config.diffusion.samples
    s = steps or model.config.diffusion.sample_steps
    m = len(model.info.modalities)
    f = len(SIGNALS) + m
    tab = [n for n, kind in model.info.modalities if kind == "tabular"]
    keys = ("probs", "sample_probs", "given", "spread", "conf", "change", "gain", "decision", "signals", "concepts",
            *[f"{n}/{q}" for n in tab for q in range(3)])
    outs: dict[str, list[np.ndarray]] = {n: [] for n in keys}
    for start in range(0, len(idx), batch_size):
        rows = idx[start:start + batch_size]
        batch = table.batch(rows, device, None if drop is None else drop[start:start + batch_size])
        h, present = model.encode(batch)  # float32 on every device (core/device.py)
        noise = None if bool(present.all()) or model.denoiser is None else model.case_noise(table.keys[rows], present, k, seed)
        probs_k, hs = model.sample_probabilities(h, present, noise, s)
        probs = probs_k.mean(0)
        b = len(rows)
        nan = torch.full((b, m), float("nan"), device=probs.device)
        spread, conf, change, gain, decision = nan.clone(), nan.clone(), nan.clone(), nan.clone(), nan.clone()
        signals = torch.full((b, m, f), float("nan"), device=probs.device)
        n_concepts = model.concept_baseline.shape[1] if getattr(model.fusion, "knowledge", None) is not None else 0
        concepts = torch.full((b, m, n_concepts), float("nan"), device=probs.device)
        assumed = {n: [torch.full((b, len(model.info.labs[n])), float("nan"), device=probs.device)] * 3 for n in tab}
        if hs is not None and describe:
            missing = ~present
            change, gain, decision = _value_of_information(model, hs, present, probs.argmax(-1))
            signals = model.synthesis_signals(hs, probs_k, present, change, gain)
            spread = torch.where(missing, model.spread(hs), nan)
            conf = torch.where(missing, model.confidence(signals), nan)
            change, gain, decision = (torch.where(missing, v, nan) for v in (change, gain, decision))
            signals = torch.where(missing.unsqueeze(-1), signals, float("nan"))
            for n in tab:
                i = model.info.names.index(n)
                rows_missing = missing[:, i].unsqueeze(-1)
                assumed[n] = [torch.where(rows_missing, v, float("nan")) for v in model.decoders[n].interval(hs[:, :, i])]
            if n_concepts:
                lift = model.concept_attention(hs).mean(0) - model.concept_baseline
                concepts = torch.where(missing.unsqueeze(-1), lift, float("nan"))
        outs["sample_probs"].append(probs_k.expand(k, -1, -1).cpu().numpy())
        for n, v in (("probs", probs), ("given", present), ("spread", spread), ("conf", conf), ("change", change),
                     ("gain", gain), ("decision", decision), ("signals", signals), ("concepts", concepts)):
            outs[n].append(v.cpu().numpy())
        for n in tab:
            for q in range(3):
                outs[f"{n}/{q}"].append(assumed[n][q].cpu().numpy())
        if on_batch:
            on_batch(start + b, len(idx))
    cat = {n: np.concatenate(v, axis=1 if n == "sample_probs" else 0) for n, v in outs.items()}
    return TableOutput(cat["probs"], cat["given"], cat["spread"], cat["conf"], cat["change"], cat["gain"],
                       cat["decision"], cat["signals"], cat["sample_probs"], {n: tuple(cat[f"{n}/{q}"] for q in range(3)) for n in tab}, cat["concepts"])


@torch.no_grad()
def encode_table(model: RobustMDiff, table: FeatureTable, idx: np.ndarray, device: torch.device | str | None = None,
                 drop: np.ndarray | None = None, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents H (N, M, d_h) and presence (N, M) of rows `idx`, encoded `batch_size` rows at a time (the
    table's large arrays may be memory-mapped), on the model's device."""
    device = model_device(model) if device is None else device
    hs, ps = [], []
    for s in range(0, len(idx), batch_size):
        h, p = model.encode(table.batch(idx[s:s + batch_size], device, None if drop is None else drop[s:s + batch_size]))
        hs.append(h.float())
        ps.append(p)
    return torch.cat(hs), torch.cat(ps)


def _value_of_information(model: RobustMDiff, hs: torch.Tensor, present: torch.Tensor,
                          answer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each missing modality: let only its latent vary over the K samples (others at their sample mean)
    and measure how much the probabilities move (expected change), how much uncertainty it would remove
    (information gain) and how often the decision itself would change (the share of samples whose predicted
    class differs from `answer` (B,), the current one). Only the first two feed the synthesis confidence."""
    mean = hs.mean(0, keepdim=True)
    change = torch.zeros(present.shape, device=hs.device)
    gain = torch.zeros(present.shape, device=hs.device)
    decision = torch.zeros(present.shape, device=hs.device)
    for i in range(present.shape[1]):
        rows = ~present[:, i]
        if not rows.any():
            continue
        h = torch.where(present.unsqueeze(0).unsqueeze(-1), hs, mean.expand_as(hs)).clone()
        h[:, :, i] = hs[:, :, i]
        p = model.completed_probabilities(h, present)
        pbar = p.mean(0)
        change[:, i] = 0.5 * (p - pbar).abs().sum(-1).mean(0)
        gain[:, i] = (entropy(pbar) - entropy(p).mean(0)).clamp_min(0)
        decision[:, i] = (p.argmax(-1) != answer).float().mean(0)
    return change, gain, decision


IMPLIED_CONCEPTS = 5


def _sig(x: float, digits: int = 3) -> float:
    """A value rounded to `digits` significant figures (assumed values are estimates, not measurements)."""
    return float(f"{float(x):.{digits}g}")


def _assumed_value(lab: LabSpec, median: float, low: float, high: float) -> dict:
    """One assumed lab value in its unit: the median and the 80 % interval within the plausible range, always
    ordered low ≤ median ≤ high (clipping to the plausible range must not turn an interval inside out)."""
    lo, hi = lab.plausible
    median = min(max(median, lo), hi)
    low, high = min(max(low, lo), median), max(min(high, hi), median)
    return {"median": _sig(median), "low": _sig(low), "high": _sig(high), "unit": lab.unit, "label": lab.label,
            "reference": lab.ref_text(), "flag": lab.flag(median)}


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

    def __init__(self, model: RobustMDiff, meta: dict, device: torch.device, guard: Guard | None = None):
        self.model, self.meta, self.device, self.guard = model, meta, device, guard
        self.spec = DatasetSpec.from_dict(meta["spec"])
        self.classes = list(model.info.classes)
        self.modalities = list(model.info.modalities)
        self._class_concepts: dict[str, set[str]] | None = None
        self.next_test_evidence = next_test_evidence(meta)

    @classmethod
    def load(cls, checkpoint: str | Path | None = None, device: str | torch.device | None = None) -> "Predictor":
        dev = pick_device(device)
        folder = checkpoint or DEFAULT_CHECKPOINT
        model, meta = load_checkpoint(folder, dev)
        return cls(model, meta, dev, load_guard(folder, meta))

    # ---- inputs ----------------------------------------------------------------------------------------
    def lab_catalogue(self, name: str) -> list[LabSpec]:
        """The labs tabular modality `name` reads, in the model's order: those it was trained with (recorded in
        the checkpoint), so a spec rule changed since training never shifts which value is which."""
        labs = {lab.name: lab for lab in self.spec.labs}
        return [labs[n] for n in self.model.info.labs[name]]

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
            if inputs[name] is not None:
                raise InputError(key, f"modality '{name}' is given twice")
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
        return read_labs(src, self.lab_catalogue(name))

    def domain_mismatches(self, case: CaseInputs, absent: Iterable[str] = ()) -> dict[str, list[str]]:
        """Per image modality of the case (those switched off aside), what its DICOM header says against the
        spec's `expect`."""
        out = {}
        for name, kind in self.modalities:
            scan = case.inputs.get(name)
            if kind == "image" and isinstance(scan, Scan) and name not in absent:
                found = domain_mismatches(scan, self.spec.modality(name).expect)
                if found:
                    out[name] = found
        return out

    def check_domain(self, case: CaseInputs, allow_domain_mismatch: bool = False, absent: Iterable[str] = ()) -> None:
        """Refuse a scan whose header contradicts what the model was trained on, unless overridden."""
        if allow_domain_mismatch:
            return
        for name, found in self.domain_mismatches(case, absent).items():
            raise DomainError(name, found)

    # ---- what synthesis assumed ------------------------------------------------------------------------
    def _assumed(self, out: TableOutput, r: int, j: int, refused: dict[str, str], predicted: str) -> dict:
        """For a synthesized tabular modality, the lab values its latent implies (median and 80 % interval, in
        the catalogue's units; labs whose given value was refused are listed under "refused" instead); for a
        synthesized note, the concepts its latent leans on most."""
        name, kind = self.modalities[j]
        if kind == "tabular" and name in out.assumed and np.isfinite(out.assumed[name][0][r]).all():
            enc = self.model.encoders[name]
            med, low, high = (enc.inverse(torch.as_tensor(a[r], device=self.device)).cpu().numpy() for a in out.assumed[name])
            values, refused_labs = {}, {}
            learned = self.model.decoders[name].learned().cpu().numpy()
            for i, lab in enumerate(self.lab_catalogue(name)):  # the decoder's own outputs, in its order
                if lab.name in refused:
                    refused_labs[lab.name] = {"label": lab.label, "unit": lab.unit, "reason": refused[lab.name]}
                elif learned[i]:
                    values[lab.name] = _assumed_value(lab, float(med[i]), float(low[i]), float(high[i]))
            return {"expected_values": values, **({"refused": refused_labs} if refused_labs else {})}
        if kind == "text" and out.concepts.shape[-1] and np.isfinite(out.concepts[r, j]).all():
            return {"implied_concepts": self.implied_concepts(out.concepts[r, j], predicted)}
        return {}

    def implied_concepts(self, lift: np.ndarray, predicted: str) -> list[dict]:
        """The concepts a synthesized note's latent attends to more than real notes do, kept only where the
        knowledge graph links them to the predicted class (a note synthesized for a pneumothorax never
        'implies hemoptysis'): the strongest first, at most IMPLIED_CONCEPTS; none when none agree."""
        ids = self.meta.get("concept_ids", [])
        linked = self.class_concepts().get(predicted, {predicted})
        top = [t for t in np.argsort(-lift) if lift[t] > 0 and t < len(ids) and ids[t] in linked]
        return [{"concept": ids[t].replace("_", " "), "lift": float(lift[t])} for t in top[:IMPLIED_CONCEPTS]]

    def class_concepts(self) -> dict[str, set[str]]:
        """Per class, the concept ids the knowledge graph links to it (the class's own concept included)."""
        if self._class_concepts is None:
            path = ROOT / self.model.config.model.knowledge_graph
            linked = {c: {c} for c in self.classes}
            try:
                graph = KnowledgeGraph.load(path, self.classes)
            except RobustMDiffError:  # no graph to read (moved, edited badly): each class implies only itself
                graph = KnowledgeGraph([], [], [], [])
            for i, k, w in graph.edges:
                a, b = graph.ids[i], graph.ids[k]
                if w > 0:
                    for x, y in ((a, b), (b, a)):
                        if x in linked:
                            linked[x].add(y)
            self._class_concepts = linked
        return self._class_concepts

    # ---- prediction --------------------------------------------------------------------------------------
    def features(self, cases: list[CaseInputs]) -> FeatureTable:
        labs = {n: self.model.info.labs[n] for n, t in self.modalities if t == "tabular"}
        return table_from_inputs(cases, self.modalities, labs, self.model.config.model, self.device)

    def predict(self, case: CaseInputs, absent: Iterable[str] = (), samples: int | None = None,
                steps: int | None = None, seed: int = 0, allow_domain_mismatch: bool = False) -> Prediction:
        return self.predict_many([case], absent, samples, steps, seed, allow_domain_mismatch)[0]

    def predict_many(self, cases: list[CaseInputs], absent: Iterable[str] = (), samples: int | None = None,
                     steps: int | None = None, seed: int = 0, allow_domain_mismatch: bool = False) -> list[Prediction]:
        """Predict cases; a scan whose header contradicts the model's domain raises DomainError unless
        `allow_domain_mismatch` (the result then lists the contradictions in `domain`)."""
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
            self.check_domain(c, allow_domain_mismatch, absent)
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
            predicted = self.classes[int(out.probs[r].argmax())]
            syn = {names[j]: {"confidence": float(out.confidence[r, j]), "spread": float(out.spread[r, j]),
                              "expected_change": float(out.expected_change[r, j]),
                              "expected_information_gain": float(out.info_gain[r, j]),
                              "decision_change": float(out.decision_change[r, j]),
                              **self._assumed(out, r, j, c.refused.get(names[j], {}), predicted)}
                   for j in range(len(names)) if not out.given[r, j]}
            used = [n for n in names if n not in absent_names(drop[r], names) and c.inputs.get(n) is not None]
            warnings = [f"{n}: {w}" for n in used for w in _input_warnings(c.inputs[n])]
            ood = {n: o for n, o in (self.guard.assess(table, r) if self.guard is not None else {}).items() if n in used}
            domain = [f"{n}: {d}" for n, found in self.domain_mismatches(c, absent_names(drop[r], names)).items()
                      for d in found]
            results.append(Prediction(prediction=predicted, probabilities=probs,
                                      present=[names[j] for j in range(len(names)) if out.given[r, j]], synthesized=syn,
                                      device=str(self.device), latency_ms=latency, warnings=warnings, ood=ood,
                                      domain=domain, next_test_evidence=self.next_test_evidence))
        return results


def _input_warnings(value: Modal) -> list[str]:
    """What reading an input did or found that the user should know (shown beside the prediction)."""
    if isinstance(value, LabPanel):
        return list(value.warnings)
    if isinstance(value, Scan):
        extra = [f"{value.pixel_identifiers}; the scan is left out of reports unless you confirm it carries no "
                 "patient details"] if value.pixel_identifiers else []
        return list(value.notes) + extra
    return []
