"""The explanation of one case: what each modality contributed, where in the image, which words of the
note, which labs, and for each missing modality how confident its synthesis is and what acquiring it
would change.

`explain_case` is the one entry point (app, CLI, review, faithfulness). `method` picks the attribution
family used for image, note and labs alike: Integrated Gradients (default), gradient × input, SHAP
(KernelSHAP over image patches and words, permutation SHAP over labs) or a random control (for blinded
review studies).
"""

from __future__ import annotations

import bisect
import time
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch
from captum.attr import KernelShap

from core.data.dataset import CaseInputs
from core.explain.graph import CaseGraph
from core.explain.image import IMAGE_STEPS, image_attribution
from core.explain.labs import LabAttribution, lab_attribution, lab_ig, lab_shap
from core.explain.text import TEXT_STEPS, WordAttribution, merge_tokens, note_attribution, words_of
from core.inference import Prediction, Predictor

METHODS = ("integrated_gradients", "gradient_x_input", "shap", "random")
SHAP_PATCH = 16  # image SHAP features: patches of 16×16 model pixels


@dataclass
class Explanation:
    case_id: str
    method: str
    target: str
    prediction: Prediction
    contributions: list[dict]  # per modality: gradient share, perturbation, status
    image: dict[str, np.ndarray] = field(default_factory=dict)  # modality → (S, S) signed attribution
    image_method: dict[str, str] = field(default_factory=dict)
    note: dict[str, list[WordAttribution]] = field(default_factory=dict)
    labs: dict[str, list[LabAttribution]] = field(default_factory=dict)
    completeness: dict[str, float] = field(default_factory=dict)  # IG |sum(attr) - (f(x) - f(baseline))|
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"case_id": self.case_id, "method": self.method, "target": self.target,
                "prediction": self.prediction.to_dict(), "contributions": self.contributions,
                "image": {k: {"method": self.image_method[k], "shape": list(v.shape),
                              "positive_mass": float(np.clip(v, 0, None).sum()), "max": float(v.max()),
                              "min": float(v.min())} for k, v in self.image.items()},
                "note": {k: [w.to_dict() for w in v] for k, v in self.note.items()},
                "labs": {k: [r.to_dict() for r in v] for k, v in self.labs.items()},
                "completeness": self.completeness, "seconds": self.seconds}


def modality_contributions(graph: CaseGraph) -> list[dict]:
    """A_{i,c} = |dp(y=c|Z)/dH_i| (design §3.3.2), normalised over modalities, beside the perturbation
    check p(c) - p(c | modality i switched off)."""
    hs = graph.hs.clone().requires_grad_(True)
    k, b, m, _ = hs.shape
    z, _ = graph.model.fuse(hs, graph.avail.expand(k, b, m), graph.syn.expand(k, b, m))
    p = graph.model.probabilities(graph.model.logits(z), graph.present[None]).mean(0)[0, graph.target]
    (grad,) = torch.autograd.grad(p, hs)
    score = grad.abs().sum(-1).mean(0)[0].cpu().numpy()
    score = score / max(score.sum(), 1e-12)
    out = []
    for i, name in enumerate(graph.names):
        present = bool(graph.present[i])
        change = float(graph.probs[graph.target] - graph.probs_without(i)[graph.target]) if present else float("nan")
        out.append({"modality": name, "status": "present" if present else "synthesized" if bool(graph.syn[i]) else "absent",
                    "gradient": float(score[i]), "perturbation": change})
    return out


def _random_like(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _image_shap(graph: CaseGraph, name: str, samples: int = 64) -> np.ndarray:
    pixels = graph.image_pixels(name)
    s = pixels.shape[-1]
    grid = torch.arange((s // SHAP_PATCH) ** 2, device=graph.device).view(s // SHAP_PATCH, s // SHAP_PATCH)
    mask = grid.repeat_interleave(SHAP_PATCH, 0).repeat_interleave(SHAP_PATCH, 1)[None, None]
    ks = KernelShap(lambda px: graph.objective(graph.probs_from_image(name, px), graph.target))
    with torch.no_grad():
        attr = ks.attribute(pixels, baselines=torch.zeros_like(pixels), feature_mask=mask, n_samples=samples,
                            perturbations_per_eval=16)
    return attr[0, 0].cpu().numpy() / SHAP_PATCH ** 2


def _note_shap(graph: CaseGraph, name: str, samples: int = 64) -> list[WordAttribution]:
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
    with torch.no_grad():
        attr = ks.attribute(emb, baselines=base, feature_mask=mask[None, :, :, None].expand_as(emb),
                            n_samples=samples, perturbations_per_eval=8)
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
                 allow_domain_mismatch: bool = False) -> Explanation:
    """Explain a case's prediction; like prediction, refuses a scan whose header contradicts the model's
    domain unless `allow_domain_mismatch`."""
    if method not in METHODS:
        raise ValueError(f"unknown explanation method {method!r}; use one of {METHODS}")
    predictor.check_domain(case, allow_domain_mismatch, absent)
    t0 = time.perf_counter()
    graph = CaseGraph(predictor, case, absent, seed=seed)
    prediction = graph.prediction()
    target = graph.target
    exp = Explanation(case.case_id, method, predictor.classes[target], prediction, modality_contributions(graph))
    rng_seed = zlib.crc32(case.case_id.encode())  # stable across processes, unlike hash()
    for i, (name, kind) in enumerate(predictor.modalities):
        if not bool(graph.present[i]):
            continue
        if kind == "image":
            if method == "random":
                s = predictor.model.config.model.image_size
                exp.image[name], delta, used = _random_like(rng_seed, (s, s)), 0.0, "random"
            elif method == "shap":
                exp.image[name], delta, used = _image_shap(graph, name), 0.0, "kernel_shap"
            else:
                used = image_method or method
                exp.image[name], delta = image_attribution(graph, name, used, steps or IMAGE_STEPS)
            exp.image_method[name] = used
            exp.completeness[name] = delta
        elif kind == "text":
            if method == "random":
                words = words_of(case.inputs[name])
                r = _random_like(rng_seed + 1, len(words))
                exp.note[name] = [WordAttribution(w, a, b, float(x)) for (a, b, w), x in zip(words, r)]
            elif method == "shap":
                exp.note[name] = _note_shap(graph, name)
            else:
                exp.note[name], exp.completeness[name] = note_attribution(graph, name, method, steps or TEXT_STEPS)
        else:
            n_labs = len(predictor.spec.lab_features(name))
            score = {"random": lambda: _random_like(rng_seed + 2, n_labs),
                     "shap": lambda: lab_shap(graph, name, target),
                     "gradient_x_input": lambda: lab_ig(graph, name, target, method=method)[0],
                     "integrated_gradients": lambda: None}[method]()
            exp.labs[name], exp.completeness[name] = lab_attribution(graph, name, target, score)
    exp.seconds = time.perf_counter() - t0
    return exp
