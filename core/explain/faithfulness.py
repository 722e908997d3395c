"""How faithful the explanations are, measured on the embedded cohort's test split.

- Against ground truth: share of positive heatmap mass inside the finding mask and the pointing game;
  precision of the top-k note words against the decisive evidence spans; recall of the top-k labs
  against the signal labs (k = the case's number of signal labs). Each beside the expectation of a random attribution.
- By perturbation: deletion and insertion curves (area under p(target)) for image patches and note
  words in attribution order, against a random order.
The synthesis confidence is measured by `python -m core calibration` (`core/calibration/report.py`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from core.data.dataset import Dataset
from core.explain.graph import CaseGraph
from core.explain.image import blurred, image_attribution
from core.explain.labs import lab_ig, lab_shap
from core.explain.text import note_attribution
from core.features import FeatureTable
from core.inference import Predictor
from core.jsonout import dumps

PATCH = 8
FRACTIONS = np.linspace(0, 1, 11)
TOP_WORDS = 5
# "all": each modality's explanation within the full case (as the app shows it); "alone": the modality on
# its own, the others switched off, so that its evidence is all the model has (deletion curves there).
SETTINGS = ("all", "alone")


def _auc(curve: np.ndarray) -> float:
    return float(np.trapezoid(curve, FRACTIONS))


def image_curves(graph: CaseGraph, name: str, heat: np.ndarray, order_seed: int) -> dict[str, float]:
    """Deletion/insertion AUC of p(target) over patches in attribution order and in a random order."""
    px = graph.image_pixels(name)
    base = blurred(px)
    s = px.shape[-1]
    g = s // PATCH
    scores = heat.reshape(g, PATCH, g, PATCH).sum((1, 3)).ravel()
    orders = {"attribution": np.argsort(-scores), "random": np.random.default_rng(order_seed).permutation(g * g)}
    out = {}
    for kind, order in orders.items():
        dele, ins = [], []
        for frac in FRACTIONS:
            m = np.zeros(g * g, bool)
            m[order[: int(round(frac * g * g))]] = True
            mask = torch.as_tensor(np.kron(m.reshape(g, g), np.ones((PATCH, PATCH))), dtype=px.dtype, device=px.device)[None, None]
            dele.append(px * (1 - mask) + base * mask)
            ins.append(base * (1 - mask) + px * mask)
        with torch.no_grad():
            p = graph.probs_from_image(name, torch.cat(dele + ins))[:, graph.target].cpu().numpy()
        out[f"deletion_{kind}"], out[f"insertion_{kind}"] = _auc(p[:11]), _auc(p[11:])
    return out


def note_curves(graph: CaseGraph, name: str, words, order_seed: int) -> dict[str, float]:
    """Deletion AUC of p(target) as words are replaced by [PAD], in attribution and in random order."""
    chunks = graph.note_chunks(name)
    emb, base = graph.note_embeddings(chunks)
    spans = [(w.start, w.end) for w in words]
    token_word = []
    for c, offs in enumerate(chunks.offsets):
        for t, (a, _) in enumerate(offs):
            token_word.append((c, t + 1, next((i for i, (ws, we) in enumerate(spans) if ws <= a < we), -1)))
    scores = np.array([w.score for w in words])
    orders = {"attribution": np.argsort(-scores), "random": np.random.default_rng(order_seed).permutation(len(words))}
    out = {}
    for kind, order in orders.items():
        batch = []
        for frac in FRACTIONS:
            gone = set(order[: int(round(frac * len(words)))].tolist())
            e = emb.clone()
            for c, t, wi in token_word:
                if wi in gone:
                    e[0, c, t] = base[0, c, t]
            batch.append(e)
        with torch.no_grad():
            p = graph.probs_from_note(name, chunks, torch.cat(batch))[:, graph.target].cpu().numpy()
        out[f"deletion_{kind}"] = _auc(p)
    return out


def _score_modality(graph: CaseGraph, predictor: Predictor, ds: Dataset, mname: str, kind: str, truth: dict, row: int,
                    setting: str, image_methods, add) -> None:
    """Ground-truth and perturbation scores of one modality's explanation, under keys '<setting>/<modality>/…'."""
    p = f"{setting}/"
    curves = setting == "alone"
    if kind == "image" and truth.get("image_mask"):
        mask = np.asarray(Image.open(ds.root / truth["image_mask"])) > 0
        if mask.shape != (graph.image_pixels(mname).shape[-1],) * 2:
            return
        near = ndimage.binary_dilation(mask, iterations=2)
        add(f"{p}image/random/mass_in_mask", mask.mean())
        add(f"{p}image/random/pointing", near.mean())
        for method in image_methods:
            heat, _ = image_attribution(graph, mname, method)
            pos = np.clip(heat, 0, None)
            add(f"{p}image/{method}/mass_in_mask", pos[mask].sum() / max(pos.sum(), 1e-12))
            add(f"{p}image/{method}/pointing", float(near.ravel()[np.argmax(ndimage.uniform_filter(heat, 3))]))
            if method == "integrated_gradients" and curves:
                for k, v in image_curves(graph, mname, heat, row).items():
                    add(f"{p}image/{k}", v)
    elif kind == "text":
        words, _ = note_attribution(graph, mname)
        spans = [(s["start"], s["end"]) for s in truth.get("note_spans", []) if s["decisive"]]
        real = [w for w in words if any(ch.isalnum() for ch in w.word)]
        if spans and real:
            hit = np.array([any(a < e and s < b for s, e in spans) for a, b in ((w.start, w.end) for w in real)])
            top = np.argsort([-w.score for w in real])[:TOP_WORDS]
            add(f"{p}note/integrated_gradients/precision_at_5", hit[top].mean())
            add(f"{p}note/random/precision_at_5", hit.mean())
        if curves:
            for k, v in note_curves(graph, mname, words, row).items():
                add(f"{p}note/{k}", v)
    elif kind == "tabular":
        signal = set(truth.get("signal_labs", []))
        _, measured = graph.lab_inputs(mname)
        names = [lab.name for lab in predictor.spec.lab_features(mname)]
        idx = np.flatnonzero(measured[0].cpu().numpy())
        wanted = [j for j in idx if names[j] in signal]
        if not wanted:
            return
        k = len(wanted)  # top-k with k = the number of signal labs (recall = precision = R-precision)
        for method, scores in (("integrated_gradients", lab_ig(graph, mname, graph.target)[0]),
                               ("shap", lab_shap(graph, mname, graph.target))):
            top = idx[np.argsort(-np.abs(scores[idx]))[:k]]
            add(f"{p}labs/{method}/recall_at_k", len(set(top) & set(wanted)) / k)
        add(f"{p}labs/random/recall_at_k", k / len(idx))


def faithfulness(predictor: Predictor, ds: Dataset, table: FeatureTable, n: int = 60, seed: int = 0,
                 image_methods=("integrated_gradients", "grad_cam", "gradient_x_input"), progress: bool = True) -> dict:
    t0 = time.perf_counter()
    te = ds.indices("test")
    complete = te[table.present[te].all(1)]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(complete, size=min(n, len(complete)), replace=False)
    acc: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        if np.isfinite(value):
            acc.setdefault(key, []).append(float(value))

    for row in tqdm(chosen, desc="faithfulness", unit="case", disable=not progress):
        case = ds.load(int(row))
        truth = json.loads((ds.root / ds.manifest.at[int(row), "truth_path"]).read_text())
        full = CaseGraph(predictor, case, seed=seed)
        for setting in SETTINGS:
            for mname, kind in predictor.modalities:
                others = [n for n, _ in predictor.modalities if n != mname]
                graph = full if setting == "all" else CaseGraph(predictor, case, absent=others, seed=seed)
                _score_modality(graph, predictor, ds, mname, kind, truth, int(row), setting, image_methods, add)
    summary = {k: {"mean": float(np.mean(v)), "n": len(v)} for k, v in sorted(acc.items())}
    return {"cases": int(len(chosen)), "seconds": time.perf_counter() - t0, "metrics": summary}


def markdown(result: dict) -> str:
    lines = [f"Scored on {result['cases']} complete test cases of the embedded cohort.", "",
             "| measure | mean | n |", "|---|---|---|"]
    lines += [f"| {k} | {v['mean']:.3f} | {v['n']} |" for k, v in result["metrics"].items()]
    return "\n".join(lines) + "\n"


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "faithfulness.json").write_text(dumps(result))
    (out / "faithfulness.md").write_text(markdown(result), encoding="utf-8")
