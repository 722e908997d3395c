"""How faithful the explanations are, measured on the embedded cohort's test split.

- Against ground truth: share of positive heatmap mass inside the finding mask and the pointing game;
  precision of the top-5 note words and of the top-5 note phrases (core/explain/phrases.py; a phrase
  counts when it overlaps a decisive span) against the decisive evidence spans; recall of the top-k labs
  against the signal labs (k = the case's number of signal labs). Each beside the expectation of a random attribution.
- By perturbation: deletion and insertion curves (area under p(target)) for image patches and note
  words in attribution order, against a random order; image patches are deleted to the blurred image and,
  where the cohort rendered the same film without its findings, to that film (the baseline that removes the
  finding).
- Note words as the app shows them (hierarchical IG, core/explain/text.py) and, optionally
  (`note_all_words`), with every unit's words attributed, for comparison.
- Integrated Gradients' relative completeness error and steps per modality (median over the cases), and
  the wall time of one full explanation (warm, median over cases).
- Optionally (`negation_counterfactual`): whether negating a decisive note finding lowers p(diagnosis).
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

from core.data.dataset import CaseInputs, Dataset
from core.explain.explanation import explain_case
from core.explain.graph import CaseGraph
from core.explain.ig import TOLERANCE
from core.explain.image import IMAGE_METHODS, blurred, image_attribution
from core.explain.labs import lab_ig, lab_shap
from core.explain.phrases import phrase_attributions
from core.explain.text import note_attribution
from core.features import FeatureTable
from core.inference import Predictor
from core.jsonout import dumps

PATCH = 8
FRACTIONS = np.linspace(0, 1, 11)
TOP_WORDS = 5
TOP_PHRASES = 5
# "all": each modality's explanation within the full case (as the app shows it); "alone": the modality on
# its own, the others switched off, so that its evidence is all the model has (deletion curves there).
SETTINGS = ("all", "alone")


def _auc(curve: np.ndarray) -> float:
    return float(np.trapezoid(curve, FRACTIONS))


def image_curves(graph: CaseGraph, name: str, heat: np.ndarray, order_seed: int,
                 without_findings: np.ndarray | None = None) -> dict[str, float]:
    """Deletion/insertion AUC of p(target) over patches in attribution order and in a random order. A deleted
    patch takes the blurred image's pixels (keys `deletion_…`, `insertion_…`) and, when the cohort rendered the
    same film without its findings (`without_findings`, uint8), that film's pixels too (keys ending
    `_finding_removed`): blurring keeps much of a large, smooth finding; the finding-free film removes it."""
    px = graph.image_pixels(name)
    baselines = {"": blurred(px)}
    if without_findings is not None and without_findings.shape == tuple(px.shape[-2:]):
        baselines["_finding_removed"] = torch.as_tensor(without_findings / 255.0, dtype=px.dtype, device=px.device)[None, None]
    s = px.shape[-1]
    g = s // PATCH
    scores = heat.reshape(g, PATCH, g, PATCH).sum((1, 3)).ravel()
    orders = {"attribution": np.argsort(-scores), "random": np.random.default_rng(order_seed).permutation(g * g)}
    out = {}
    for suffix, base in baselines.items():
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
            out[f"deletion_{kind}{suffix}"], out[f"insertion_{kind}{suffix}"] = _auc(p[:11]), _auc(p[11:])
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
                    setting: str, image_methods, add, ig_add, note_all_words: bool = False) -> None:
    """Ground-truth and perturbation scores of one modality's explanation, under keys '<setting>/<modality>/…';
    `ig_add(modality, relative error, steps)` records each IG run's completeness (setting "all" only)."""
    p = f"{setting}/"
    curves = setting == "alone"
    # the modality alone has the others synthesized: its attributions are complete for the prediction shown there
    # too, with a share through the synthesized samples
    record = ig_add if setting == "all" else (lambda m, *a: ig_add(f"{m} alone", *a))
    mask = None
    if kind == "image" and truth.get("image_mask"):
        mask = np.asarray(Image.open(ds.root / truth["image_mask"])) > 0
        if mask.shape != (graph.image_pixels(mname).shape[-1],) * 2:
            mask = None
    if kind == "image" and mask is None and setting == "all" and "integrated_gradients" in image_methods:
        res = image_attribution(graph, mname, "integrated_gradients")  # no finding: completeness only
        record(mname, res.relative_error, res.steps, res.through_synthesis)
    elif kind == "image" and mask is not None:
        near = ndimage.binary_dilation(mask, iterations=2)
        add(f"{p}image/random/mass_in_mask", mask.mean())
        add(f"{p}image/random/pointing", near.mean())
        for method in image_methods:
            heat, error, steps, through = image_attribution(graph, mname, method)
            if method == "integrated_gradients":
                record(mname, error, steps, through)
            pos = np.clip(heat, 0, None)
            add(f"{p}image/{method}/mass_in_mask", pos[mask].sum() / max(pos.sum(), 1e-12))
            add(f"{p}image/{method}/pointing", float(near.ravel()[np.argmax(ndimage.uniform_filter(heat, 3))]))
            if method == "integrated_gradients" and curves:
                healthy = truth.get("image_without_findings")
                healthy = np.asarray(Image.open(ds.root / healthy)) if healthy else None
                for k, v in image_curves(graph, mname, heat, row, healthy).items():
                    add(f"{p}image/{k}", v)
    elif kind == "text":
        words, _, units, detail = note_attribution(graph, mname)  # what the app shows
        record(mname, max(units.relative_error, detail.relative_error), max(units.steps, detail.steps), units.through_synthesis)
        spans = [(s["start"], s["end"]) for s in truth.get("note_spans", []) if s["decisive"]]
        real = [w for w in words if any(ch.isalnum() for ch in w.word)]
        if spans and real:
            hit = np.array([any(a < e and s < b for s, e in spans) for a, b in ((w.start, w.end) for w in real)])
            top = np.argsort([-w.score for w in real], kind="stable")[:TOP_WORDS]
            add(f"{p}note/integrated_gradients/precision_at_5", hit[top].mean())
            add(f"{p}note/random/precision_at_5", hit.mean())
            if note_all_words:
                every = [w for w in note_attribution(graph, mname, words="all")[0] if any(ch.isalnum() for ch in w.word)]
                top = np.argsort([-w.score for w in every], kind="stable")[:TOP_WORDS]
                add(f"{p}note/integrated_gradients_all_words/precision_at_5", hit[top].mean())
            phrases = [ph for ph in phrase_attributions(graph.case.inputs[mname], words)
                       if any(ch.isalnum() for ch in ph.text)]
            hit = np.array([any(ph.start < e and s < ph.end for s, e in spans) for ph in phrases])
            top = np.argsort([-ph.score for ph in phrases], kind="stable")[:TOP_PHRASES]
            add(f"{p}note/integrated_gradients/phrase_precision_at_5", hit[top].mean())
            add(f"{p}note/random/phrase_precision_at_5", hit.mean())
        if curves:
            for k, v in note_curves(graph, mname, words, row).items():
                add(f"{p}note/{k}", v)
    elif kind == "tabular":
        signal = set(truth.get("signal_labs", []))
        _, measured = graph.lab_inputs(mname)
        names = [lab.name for lab in predictor.lab_catalogue(mname)]
        idx = np.flatnonzero(measured[0].cpu().numpy())
        wanted = [j for j in idx if names[j] in signal]
        ig, info = lab_ig(graph, mname, graph.target)
        record(mname, info.relative_error, info.steps, info.through_synthesis)
        if not wanted:
            return
        k = len(wanted)  # top-k with k = the number of signal labs (recall = precision = R-precision)
        for method, scores in (("integrated_gradients", ig), ("shap", lab_shap(graph, mname, graph.target))):
            top = idx[np.argsort(-np.abs(scores[idx]))[:k]]
            add(f"{p}labs/{method}/recall_at_k", len(set(top) & set(wanted)) / k)
        add(f"{p}labs/random/recall_at_k", k / len(idx))


def faithfulness(predictor: Predictor, ds: Dataset, table: FeatureTable, n: int = 60, seed: int = 0,
                 image_methods=IMAGE_METHODS, progress: bool = True,
                 timing_cases: int = 10, note_all_words: bool = False) -> dict:
    """Every measure above on `n` complete test cases (chosen with `seed`); the explanation wall time on
    the first `timing_cases` of them, after one warm-up explanation (0: not timed)."""
    t0 = time.perf_counter()
    te = ds.indices("test")
    complete = te[table.present[te].all(1)]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(complete, size=min(n, len(complete)), replace=False)
    acc: dict[str, list[float]] = {}
    ig_runs: dict[str, dict[str, list[float]]] = {}

    def add(key: str, value: float) -> None:
        if np.isfinite(value):
            acc.setdefault(key, []).append(float(value))

    def ig_add(modality: str, error: float, steps: int, through: float) -> None:
        runs = ig_runs.setdefault(modality, {"errors": [], "steps": [], "through": []})
        runs["errors"].append(float(error))
        runs["steps"].append(int(steps))
        runs["through"].append(float(through))

    for row in tqdm(chosen, desc="faithfulness", unit="case", disable=not progress):
        case = ds.load(int(row))
        truth = json.loads((ds.root / ds.manifest.at[int(row), "truth_path"]).read_text())
        full = CaseGraph(predictor, case, seed=seed)
        for setting in SETTINGS:
            for mname, kind in predictor.modalities:
                others = [n for n, _ in predictor.modalities if n != mname]
                graph = full if setting == "all" else CaseGraph(predictor, case, absent=others, seed=seed)
                _score_modality(graph, predictor, ds, mname, kind, truth, int(row), setting, image_methods, add, ig_add,
                                note_all_words)
    summary = {k: {"mean": float(np.mean(v)), "n": len(v)} for k, v in sorted(acc.items())}
    completeness = {m: {"median_relative_error": float(np.median(r["errors"])),
                        "max_relative_error": float(np.max(r["errors"])),
                        "within_tolerance": float(np.mean(np.array(r["errors"]) <= TOLERANCE)),
                        "median_steps": float(np.median(r["steps"])), "max_steps": int(np.max(r["steps"])),
                        "median_through_synthesis": float(np.median(r["through"])),
                        "n": len(r["errors"])} for m, r in ig_runs.items()}
    return {"cases": int(len(chosen)), "seconds": time.perf_counter() - t0, "metrics": summary,
            "completeness": completeness, "tolerance": TOLERANCE,
            "explanation_seconds": explanation_time(predictor, ds, chosen[:timing_cases]) if timing_cases else None}


def explanation_time(predictor: Predictor, ds: Dataset, rows) -> dict:
    """Wall time of one full explanation (`explain_case`, Integrated Gradients, every modality) per case,
    warm: one explanation first, not counted."""
    rows = [int(r) for r in rows]
    if not rows:
        return {"median": float("nan"), "max": float("nan"), "n": 0}
    cases = [ds.load(r) for r in rows]
    explain_case(predictor, cases[0])  # warm-up (backbones, caches, allocator)
    times = []
    for case in cases:
        t = time.perf_counter()
        explain_case(predictor, case)
        times.append(time.perf_counter() - t)
    return {"median": float(np.median(times)), "max": float(np.max(times)), "n": len(times),
            "threads": torch.get_num_threads(), "device": str(predictor.device)}


def negation_counterfactual(predictor: Predictor, ds: Dataset, case_ids, batch: int = 32) -> dict:
    """For each case with a decisive, non-negated note mention in its truth file (`note_spans`), every such
    mention negated in turn with `core.model.negation.negate_mention`: whether p(the case's diagnosis) drops,
    with every modality of the case present ("all") and with the note alone ("alone"). Returns the fraction
    of negated mentions that lower it, per setting, and the median drop."""
    try:
        from core.model.negation import negate_mention
    except ImportError as e:  # written by another part of the project; measured once it is there
        return {"skipped": f"core.model.negation.negate_mention is not available ({e})"}
    note = next((n for n, k in predictor.modalities if k == "text"), None)
    if note is None:
        return {"skipped": "this model reads no note"}
    index = {str(c): i for i, c in enumerate(ds.manifest[ds.spec.case_id])}
    pairs: list[tuple[CaseInputs, CaseInputs, int]] = []
    for cid in case_ids:
        row = index.get(str(cid))
        if row is None or "truth_path" not in ds.manifest.columns:
            continue
        truth = json.loads((ds.root / ds.manifest.at[row, "truth_path"]).read_text())
        spans = [s for s in truth.get("note_spans", []) if s.get("decisive") and not s.get("negated")]
        if not spans or truth.get("diagnosis") not in predictor.classes:
            continue
        case = ds.load(row)
        text = case.inputs.get(note)
        if not isinstance(text, str):
            continue
        target = predictor.classes.index(truth["diagnosis"])
        for j, s in enumerate(spans):
            negated = negate_mention(text, s["start"], s["end"])
            pairs.append((case, CaseInputs(f"{case.case_id}/neg{j}", {**case.inputs, note: negated}, case.label), target))
    if not pairs:
        return {"skipped": "no case with a decisive, non-negated note mention"}
    others = [n for n, _ in predictor.modalities if n != note]
    out: dict = {"mentions": len(pairs), "cases": len({c.case_id for c, _, _ in pairs})}
    for setting, absent in (("all", []), ("alone", others)):
        drops = []
        for start in range(0, len(pairs), batch):
            chunk = pairs[start:start + batch]
            before = predictor.predict_many([c for c, _, _ in chunk], absent=absent)
            after = predictor.predict_many([c for _, c, _ in chunk], absent=absent)
            for (_, _, t), b, a in zip(chunk, before, after):
                cls = predictor.classes[t]
                drops.append(b.probabilities[cls] - a.probabilities[cls])
        d = np.array(drops)
        out[setting] = {"fraction_lowered": float(np.mean(d > 0)), "median_drop": float(np.median(d)),
                        "n": int(len(d))}
    return out


def markdown(result: dict) -> str:
    lines = [f"Scored on {result['cases']} complete test cases of the embedded cohort.", "",
             "| measure | mean | n |", "|---|---|---|"]
    lines += [f"| {k} | {v['mean']:.3f} | {v['n']} |" for k, v in result["metrics"].items()]
    if result.get("completeness"):
        lines += ["", f"Integrated Gradients' relative completeness error against the prediction shown (steps grow "
                      f"until ≤ {result['tolerance']:.0%}; 'alone': the other modalities missing, their samples travelling "
                      "with the input), and the share of the attribution that went through the synthesized samples:", "",
                  "| modality | median error | max error | share within tolerance | median steps | max steps "
                  "| through the synthesis (median share) | n |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {m} | {c['median_relative_error']:.2%} | {c['max_relative_error']:.2%} | {c['within_tolerance']:.0%} "
                  f"| {c['median_steps']:g} | {c['max_steps']} | {c.get('median_through_synthesis', 0.0):.0%} "
                  f"| {c['n']} |" for m, c in result["completeness"].items()]
    t = result.get("explanation_seconds")
    if t and t.get("n"):
        lines += ["", f"One full explanation (Integrated Gradients, every modality), warm: median {t['median']:.2f} s, "
                      f"max {t['max']:.2f} s over {t['n']} cases ({t['threads']} threads, {t['device']})."]
    neg = result.get("negation")
    if neg:
        if "skipped" in neg:
            lines += ["", f"Negation counterfactual: skipped: {neg['skipped']}."]
        else:
            lines += ["", f"Negation counterfactual ({neg['mentions']} decisive mentions in {neg['cases']} test notes, "
                          "each negated in turn): p(diagnosis) lowered in "
                          + "; ".join(f"{neg[s]['fraction_lowered']:.0%} with {'every modality' if s == 'all' else 'the note alone'} "
                                      f"(median drop {neg[s]['median_drop']:+.3f})" for s in ("all", "alone")) + "."]
    return "\n".join(lines) + "\n"


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "faithfulness.json").write_text(dumps(result))
    (out / "faithfulness.md").write_text(markdown(result), encoding="utf-8")
