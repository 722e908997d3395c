"""The explanation of one case: what each modality contributed, where in the image, which words and
phrases of the note, which labs, and for each missing modality how confident its synthesis is and what
acquiring it would change.

`explain_case` is the one entry point (app, CLI, review, faithfulness). `method` picks the attribution
family used for image, note and labs alike: Integrated Gradients (default; steps chosen per case until the
completeness error is ≤ 5 %, core/explain/ig.py), gradient × input, SHAP (KernelSHAP over image cells
and words, seeded from the case id so that the same case always gets the same values; permutation SHAP
over labs) or a random control (for blinded review studies).

Sign convention, everywhere (report, app, JSON): "change when removed" = p(predicted class | the modality
switched off) − p(predicted class | as given), the same quantity as the app's before/after when the
modality's switch is turned off; negative = the modality supported the prediction.
"""

from __future__ import annotations

import bisect
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from captum.attr import KernelShap

from core.data.dataset import CaseInputs
from core.explain.graph import CaseGraph
from core.explain.image import field_of_view, image_attribution, resolution, upsample
from core.explain.labs import LabAttribution, lab_attribution, lab_ig
from core.explain.phrases import PhraseAttribution, phrase_attributions
from core.explain.text import (TEXT_STEPS, UnitAttribution, WordAttribution, merge_tokens, note_attribution,
                               note_ig, words_of)
from core.inference import Predictor
from core.prediction import Prediction
from core.jsonout import clean

METHODS = ("integrated_gradients", "gradient_x_input", "shap", "random")
# KernelSHAP samples: its weighted least squares estimates one value per feature (M of them), so it needs
# well over M coalitions: 2·M + 64 (two per feature plus slack for the kernel's weight on the few
# near-empty and near-full coalitions). Capped at 512 so that a long note stays within about half a
# minute on a 2-core CPU; the cap is a sample count, not a clock, so the result never depends on load.
SHAP_MAX_SAMPLES = 512
_SHAP_LOCK = threading.Lock()  # KernelSHAP draws from torch's global generator: one seeded run at a time


_STAGE_ORDER = {"tabular": 0, "image": 1, "text": 2}  # cheapest first (the note runs the language model)


def shap_samples(n_features: int) -> int:
    return min(2 * n_features + 64, SHAP_MAX_SAMPLES)


@dataclass
class Explanation:
    case_id: str
    method: str
    target: str
    prediction: Prediction
    # per modality: "modality", "status" (present / synthesized / absent), "gradient" (share of |∂p/∂H_i|
    # over the present modalities; NaN otherwise), "change_when_removed" (p(target | switched off) −
    # p(target); NaN when not present or the only one present), "synthesis_confidence" (synthesized only)
    contributions: list[dict]
    image: dict[str, np.ndarray] = field(default_factory=dict)  # modality → (S, S) signed attribution
    image_method: dict[str, str] = field(default_factory=dict)
    note: dict[str, list[WordAttribution]] = field(default_factory=dict)
    note_phrases: dict[str, list[PhraseAttribution]] = field(default_factory=dict)
    # Integrated Gradients only: the note's units (clauses or sentences) with their attribution; the words of
    # the units marked `words` carry word attributions (core/explain/text.py note_attribution)
    note_units: dict[str, list[UnitAttribution]] = field(default_factory=dict)
    labs: dict[str, list[LabAttribution]] = field(default_factory=dict)
    # IG relative completeness error |Σattr − (f(x) − f(baseline))| / max(|f(x) − f(baseline)|, 0.01) and
    # the steps it took, for the modalities explained (or, for labs, ranked beside) by Integrated Gradients
    completeness: dict[str, float] = field(default_factory=dict)
    ig_steps: dict[str, int] = field(default_factory=dict)
    # IG: the share of each input's attribution that went through the samples synthesized for the missing
    # modalities (core/explain/graph.py integrate); the input's own attributions (drawn) hold the rest
    through_synthesis: dict[str, float] = field(default_factory=dict)
    # filled by the image attribution when it knows them: the field of view (bool, at the map's resolution)
    # and the model's effective resolution (feature cells per side)
    image_fov: dict[str, np.ndarray] = field(default_factory=dict)
    image_resolution: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def present_contributions(self) -> list[dict]:
        return [c for c in self.contributions if c["status"] == "present"]

    def missing_contributions(self) -> list[dict]:
        return [c for c in self.contributions if c["status"] != "present"]

    def to_dict(self) -> dict:
        return clean({
            "case_id": self.case_id, "method": self.method, "target": self.target,
            "prediction": self.prediction.to_dict(), "contributions": self.contributions,
            "image": {k: {"method": self.image_method[k], "shape": list(v.shape),
                          "positive_mass": float(np.clip(v, 0, None).sum()), "max": float(v.max()),
                          "min": float(v.min()),
                          "field_of_view_fraction": float(np.mean(self.image_fov[k])) if k in self.image_fov else None,
                          "effective_resolution": self.image_resolution.get(k)} for k, v in self.image.items()},
            "note": {k: [w.to_dict() for w in v] for k, v in self.note.items()},
            "note_phrases": {k: [p.to_dict() for p in v] for k, v in self.note_phrases.items()},
            "note_units": {k: [u.to_dict() for u in v] for k, v in self.note_units.items()},
            "labs": {k: [r.to_dict() for r in v] for k, v in self.labs.items()},
            "completeness": self.completeness, "ig_steps": self.ig_steps,
            "through_synthesis": self.through_synthesis,
            "seconds": self.seconds})


def modality_contributions(graph: CaseGraph, prediction: Prediction | None = None) -> list[dict]:
    """Per modality: the gradient share A_{i,c} = |dp(y=c|Z)/dH_i| (design §3.3.2), normalised over the
    PRESENT modalities only, and the change of p(c) when the modality is switched off (p without − p with,
    computed as prediction computes it: the modality then synthesized with the same per-case noise).
    Synthesized modalities get no share: they are listed with their synthesis confidence."""
    present = graph.present.cpu().numpy().astype(bool)
    h = graph.h.clone().requires_grad_(True)
    p = graph.probs_from({i: h[:, i] for i in np.flatnonzero(present)})[0, graph.target]
    (grad,) = torch.autograd.grad(p, h)
    score = grad.abs().sum(-1)[0].cpu().numpy()
    total = max(float(score[present].sum()), 1e-12)
    synthesized = prediction.synthesized if prediction is not None else {}
    out = []
    for i, name in enumerate(graph.names):
        if present[i]:
            change = float(graph.probs_without(i)[graph.target] - graph.probs[graph.target])
            out.append({"modality": name, "status": "present", "gradient": float(score[i]) / total,
                        "change_when_removed": change})
        else:
            row = {"modality": name, "status": "synthesized" if bool(graph.syn[i]) else "absent",
                   "gradient": float("nan"), "change_when_removed": float("nan")}
            if name in synthesized:
                row["synthesis_confidence"] = synthesized[name]["confidence"]
            out.append(row)
    return out


def _random_like(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


class _seeded:
    """Torch's global generator seeded for a block and restored afterwards (Captum's KernelSHAP draws its
    coalitions from it), one block at a time across threads."""

    def __init__(self, seed: int, device: torch.device):
        self.seed, self.devices = seed, [device] if device.type == "cuda" else []

    def __enter__(self):
        _SHAP_LOCK.acquire()
        self._fork = torch.random.fork_rng(devices=self.devices)
        self._fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        try:
            return self._fork.__exit__(*exc)
        finally:
            _SHAP_LOCK.release()


def _note_shap(graph: CaseGraph, name: str, seed: int, samples: int | None = None) -> list[WordAttribution]:
    chunks = graph.note_chunks(name)
    emb, base = graph.note_embeddings(chunks)
    text = graph.case.inputs[name]
    words = words_of(text)
    starts = [w[0] for w in words]
    mask = torch.zeros(emb.shape[1:3], dtype=torch.long, device=graph.device)  # feature id per token
    for c, offs in enumerate(chunks.offsets):
        for t, (a, _) in enumerate(offs):
            mask[c, t + 1] = max(0, bisect.bisect_right(starts, a) - 1) + 1  # 0 = specials (never perturbed)
    ks = KernelShap(lambda e: graph.objective(graph.probs_from_note(name, chunks, e), graph.target))
    with torch.no_grad(), _seeded(seed, graph.device):
        attr = ks.attribute(emb, baselines=base, feature_mask=mask[None, :, :, None].expand_as(emb),
                            n_samples=samples or shap_samples(int(mask.max()) + 1), perturbations_per_eval=8)
    per_token = attr[0, :, :, 0].cpu().numpy()
    offsets, scores = [], []
    for c, offs in enumerate(chunks.offsets):
        for t, off in enumerate(offs):
            offsets.append(off)
            # every token of a word carries the word's value: count it once
            scores.append(per_token[c, t + 1] if t == 0 or mask[c, t + 1] != mask[c, t] else 0.0)
    return merge_tokens(text, offsets, scores)


def explain_case(predictor: Predictor, case: CaseInputs, absent=(), method: str = "integrated_gradients",
                 image_method: str | None = None, steps: int | None = None, seed: int = 0,
                 allow_domain_mismatch: bool = False, note_words: str = "top",
                 on_stage: Callable[[str, Explanation], None] | None = None) -> Explanation:
    """Explain a case's prediction; like prediction, refuses a scan whose header contradicts the model's
    domain unless `allow_domain_mismatch`. `steps`: a fixed IG step count instead of the per-case choice.
    `note_words`: with Integrated Gradients, the words of the note's units that matter ("top") or of every unit
    ("all"; slower: MiniLM then runs over the whole note at every path point).

    `on_stage(stage, explanation so far)` is called when the prediction and modality contributions are
    ready ("contributions"), then after each present modality (its name), cheapest first (labs, image,
    note), so that a page can show the explanation as it grows."""
    if method not in METHODS:
        raise ValueError(f"unknown explanation method {method!r}; use one of {METHODS}")
    predictor.check_domain(case, allow_domain_mismatch, absent)
    t0 = time.perf_counter()
    graph = CaseGraph(predictor, case, absent, seed=seed)
    prediction = graph.prediction()
    target = graph.target
    exp = Explanation(case.case_id, method, predictor.classes[target], prediction,
                      modality_contributions(graph, prediction))
    report = on_stage or (lambda stage, e: None)
    report("contributions", exp)
    rng_seed = (zlib.crc32(case.case_id.encode()) + seed) % 2 ** 32  # stable across processes, unlike hash()
    order = sorted(enumerate(predictor.modalities), key=lambda t: _STAGE_ORDER.get(t[1][1], 1))
    for i, (name, kind) in order:
        if not bool(graph.present[i]):
            continue
        if kind == "image":
            if method == "random":
                cells = resolution(graph, name)  # a control drawn like the real maps: one value per cell
                exp.image[name] = upsample(_random_like(rng_seed, (cells, cells)), predictor.model.config.model.image_size)
                used = "random"
            else:
                used = "kernel_shap" if method == "shap" else image_method or method
                heat, error, n_steps, through = image_attribution(graph, name, used, steps, seed=rng_seed)
                exp.image[name] = heat
                if used == "integrated_gradients":
                    exp.completeness[name], exp.ig_steps[name] = error, n_steps
                    exp.through_synthesis[name] = through
            exp.image_method[name] = used
            exp.image_fov[name] = field_of_view(graph.image_pixels(name)[0, 0].cpu().numpy())
            exp.image_resolution[name] = resolution(graph, name)
        elif kind == "text":
            if method == "random":
                words = words_of(case.inputs[name])
                r = _random_like(rng_seed + 1, len(words))
                exp.note[name] = [WordAttribution(w, a, b, float(x)) for (a, b, w), x in zip(words, r)]
            elif method == "shap":
                exp.note[name] = _note_shap(graph, name, rng_seed)
            elif method == "integrated_gradients":
                exp.note[name], exp.note_units[name], units, words = note_attribution(
                    graph, name, steps or TEXT_STEPS, words=note_words)
                # the larger of the two levels' errors: the units against the shown prediction, the words
                # against their units' share
                exp.completeness[name] = max(units.relative_error, words.relative_error)
                exp.ig_steps[name] = max(units.steps, words.steps)
                exp.through_synthesis[name] = units.through_synthesis
            else:
                exp.note[name], _ = note_ig(graph, name, method)
            exp.note_phrases[name] = phrase_attributions(case.inputs[name], exp.note[name])
        else:
            n_labs = len(predictor.lab_catalogue(name))
            score = {"random": lambda: _random_like(rng_seed + 2, n_labs),
                     "shap": lambda: None,
                     "gradient_x_input": lambda: lab_ig(graph, name, target, method=method)[0],
                     "integrated_gradients": lambda: None}[method]()
            exp.labs[name], info = lab_attribution(graph, name, target, score,
                                                   rank_by="shap" if method == "shap" else "integrated_gradients")
            exp.completeness[name], exp.ig_steps[name] = info.relative_error, info.steps
            exp.through_synthesis[name] = info.through_synthesis
        exp.seconds = time.perf_counter() - t0
        report(name, exp)
    exp.seconds = time.perf_counter() - t0
    return exp
