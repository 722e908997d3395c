"""Explanations: completeness of Integrated Gradients, word merging, an end-to-end explanation, and
faithfulness above random on the embedded cohort."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients

from core.explain.explanation import explain_case
from core.explain.faithfulness import faithfulness
from core.explain.graph import CaseGraph
from core.explain.render import report_html
from core.explain.text import merge_tokens, note_attribution, note_ig, words_of
from core.model.backbones import TextBackbone, chunk_note, tokenizer
from core.paths import ROOT


@pytest.fixture(scope="module")
def complete_case(default_dataset):
    i = int(np.flatnonzero(default_dataset.presence().all(1) & (default_dataset.labels == 1))[0])
    return default_dataset.load(i)


def test_integrated_gradients_is_complete(predictor, complete_case):
    """Sum of attributions = f(input) - f(baseline) (the completeness axiom), for labs and the note."""
    g = CaseGraph(predictor, complete_case)
    z, measured = g.lab_inputs("labs")

    def f(x):
        return g.objective(g.probs_from_labs("labs", x, measured), g.target)

    attr = IntegratedGradients(f).attribute(z, baselines=torch.zeros_like(z), n_steps=64, method="gausslegendre")
    with torch.no_grad():
        diff = float(f(z) - f(torch.zeros_like(z)))
    assert float(attr.sum()) == pytest.approx(diff, abs=1e-3 + 0.01 * abs(diff))
    words, info = note_ig(g, "note", steps=32)
    chunks = g.note_chunks("note")
    emb, base = g.note_embeddings(chunks)
    with torch.no_grad():
        total = float(g.objective(g.probs_from_note("note", chunks, emb), g.target)
                      - g.objective(g.probs_from_note("note", chunks, base), g.target))
    assert info.relative_error * max(abs(total), 1e-2) < 0.05 * abs(total) + 1e-3
    assert sum(w.score for w in words) == pytest.approx(total, abs=0.05 * abs(total) + 1e-3)


def test_word_merging_on_tricky_text():
    text = "Pt c/o SOB; T 38.9°C, SpO2 89%… naïve café-owner, DDx: PE vs. PNA (r/o TB)!\n\tIL-6 élevé 1,234 mg/dL"
    enc = tokenizer()(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    scores = list(np.linspace(-1, 1, len(offsets)))
    words = merge_tokens(text, offsets, scores)
    for w in words:
        assert text[w.start:w.end] == w.word
    assert {"38.9", "SpO2", "café-owner", "naïve", "IL-6", "élevé", "c/o"} <= {w.word for w in words}
    inside = sum(s for (a, b), s in zip(offsets, scores) if b > a)
    assert sum(w.score for w in words) == pytest.approx(inside)
    assert [w.word for w in words] == [t for _, _, t in words_of(text)]


def test_long_note_beyond_the_token_limit_is_explained_whole(predictor, complete_case):
    long = complete_case.inputs["note"] + "\n" + " ".join(f"Unrelated history item {i}." for i in range(150))
    case = predictor.case(case_id="long", note=long)
    g = CaseGraph(predictor, case)
    assert sum(int(m.sum()) for m in g.note_chunks("note").attention_mask) > 1000  # far beyond 512 tokens
    words, _ = note_ig(g, "note", steps=4)
    assert words[-2].word == "149" and words[-2].score != 0.0


def test_packed_note_pooling_equals_the_padded_batch(predictor, complete_case):
    """Attribution packs a note's chunks into few rows; the chunk vectors must be those the model was trained on."""
    backbone = TextBackbone()
    for text in (complete_case.inputs["note"], "Denies fever.", (complete_case.inputs["note"] + "\n") * 10):
        chunks = chunk_note(text)
        with torch.no_grad():
            padded = backbone(chunks.input_ids, chunks.attention_mask)
            emb = backbone.word_embeddings(chunks.input_ids)[None].repeat(2, 1, 1, 1)
            packed = backbone.pooled_from_embeddings(emb, chunks.attention_mask, row_tokens=128)
        assert packed.shape == (2, *padded.shape)
        torch.testing.assert_close(packed[1], padded, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["integrated_gradients", "gradient_x_input", "shap", "random"])
def test_explanation_end_to_end(predictor, complete_case, method):
    exp = explain_case(predictor, complete_case, method=method)
    d = json.loads(json.dumps(exp.to_dict()))
    assert d["prediction"]["prediction"] == exp.target
    assert {c["modality"] for c in d["contributions"]} == {"image", "note", "labs"}
    assert sum(c["gradient"] for c in d["contributions"]) == pytest.approx(1.0)
    assert all(c["status"] == "present" and c["change_when_removed"] is not None for c in d["contributions"])
    phrases = d["note_phrases"]["note"]
    assert sum(ph["score"] for ph in phrases) == pytest.approx(sum(w["score"] for w in d["note"]["note"]), abs=1e-6)
    if method == "integrated_gradients":
        assert set(d["completeness"]) == set(d["ig_steps"]) == {"image", "note", "labs"}
    assert exp.image["image"].shape == (128, 128) and np.isfinite(exp.image["image"]).all()
    assert len(d["note"]["note"]) > 20 and len(d["labs"]["labs"]) == 14
    html = report_html(exp, complete_case.inputs)
    assert "data:image/png;base64" in html and "not a medical device" in html


def test_missing_modality_explanation_reports_value_of_acquiring(predictor, complete_case):
    exp = explain_case(predictor, complete_case, absent=["labs"])
    assert "labs" not in exp.labs and exp.contributions[2]["status"] == "synthesized"
    s = exp.prediction.synthesized["labs"]
    assert 0 <= s["confidence"] <= 1 and s["expected_change"] >= 0


def test_explain_command(default_cohort, tmp_path):
    case = "RMD-00001"
    out = subprocess.run([sys.executable, "-m", "core", "explain", "--image", str(default_cohort / f"images/{case}.png"),
                          "--note", str(default_cohort / f"notes/{case}.txt"), "--labs", str(default_cohort / f"labs/{case}.csv"),
                          "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "heatmap_image.png").stat().st_size > 1000
    d = json.loads((tmp_path / "explanation.json").read_text())
    assert d["labs"]["labs"][0]["value"] is not None
    assert "<html" in (tmp_path / "report.html").read_text()


def test_faithfulness_above_random(predictor, test_split, test_split_features):
    result = faithfulness(predictor, test_split, test_split_features, n=16, image_methods=("integrated_gradients",),
                          progress=False, timing_cases=0)
    r = result["metrics"]
    for m in ("note", "labs"):  # steps grow per case until IG is complete to 5 % (the cap is rarely reached)
        assert result["completeness"][m]["median_relative_error"] <= 0.05
    assert "all/note/integrated_gradients/phrase_precision_at_5" in r
    for setting in ("all", "alone"):
        assert r[f"{setting}/labs/integrated_gradients/recall_at_k"]["mean"] > r[f"{setting}/labs/random/recall_at_k"]["mean"]
        assert r[f"{setting}/note/integrated_gradients/precision_at_5"]["mean"] > r[f"{setting}/note/random/precision_at_5"]["mean"]
    assert r["alone/note/deletion_attribution"]["mean"] < r["alone/note/deletion_random"]["mean"]
    assert r["alone/image/integrated_gradients/mass_in_mask"]["mean"] > r["alone/image/random/mass_in_mask"]["mean"]


def test_what_is_explained_is_the_prediction_shown(predictor, complete_case):
    """With the scan missing, f(input) is the probability the app shows, and the note's attributions (units, plus
    the part through the scan's samples, which travel from those the model synthesizes for the note at baseline)
    add up to log p(shown) − log p(note at baseline, the scan synthesized again from it)."""
    shown = predictor.predict(complete_case, absent=["image"]).probabilities
    g = CaseGraph(predictor, complete_case, absent=["image"])
    p_shown = shown[predictor.classes[g.target]]
    assert float(g.probs[g.target]) == pytest.approx(p_shown, abs=1e-5)
    words, units, unit_ig, word_ig = note_attribution(g, "note")
    chunks = g.note_chunks("note")
    emb, base = g.note_embeddings(chunks)
    with torch.no_grad():
        again = g.synthesized_from({g.index("note"): g.note_latent("note", chunks, base)})
        at_baseline = float(g.objective(g.probs_from({g.index("note"): g.note_latent("note", chunks, base)}, again), g.target))
        held = float(g.objective(g.probs_from_note("note", chunks, base), g.target))
    total = np.log(p_shown) - at_baseline
    assert at_baseline != pytest.approx(held, abs=1e-3)  # the scan's samples do follow the note
    direct = sum(u.score for u in units)
    assert unit_ig.relative_error <= 0.05 and word_ig.relative_error <= 0.05
    assert 0 < unit_ig.through_synthesis < 1
    # |direct| and |through| split the attribution; direct + through = total within the IG tolerance
    through = unit_ig.through_synthesis / (1 - unit_ig.through_synthesis) * abs(direct)
    assert min(abs(direct + through - total), abs(direct - through - total)) <= 0.05 * abs(total) + 2e-3
    # words are attributed in the expanded units only, and those hold most of the note's attribution
    expanded = [u for u in units if u.words]
    assert 1 <= len(expanded) < len(units)
    inside = [w for w in words if any(u.start <= w.start < u.end for u in expanded)]
    assert all(w.score == 0.0 for w in words if w not in inside) and any(w.score != 0.0 for w in inside)


def test_every_word_on_request(predictor, complete_case):
    g = CaseGraph(predictor, complete_case)
    words, units, unit_ig, word_ig = note_attribution(g, "note", words="all")
    assert all(u.words for u in units)
    assert sum(w.score for w in words) == pytest.approx(sum(u.score for u in units), abs=0.05 * abs(sum(u.score for u in units)) + 2e-3)


def test_clause_units_read_each_finding_apart():
    text = "HPI: 77 yo M w/ PMH of HTN, CKD who presents with fever and productive cough. Denies orthopnea or leg swelling."
    chunks = chunk_note(text, negation=True, units="clause")
    read = [text[offs[0][0]:offs[-1][1]] for offs in chunks.offsets]
    assert "who presents with fever" in read and "and productive cough." in read
    assert not any("yo" in r and "fever" in r for r in read)
    negated = [r for r, neg in zip(read, chunks.negated) if neg]
    assert any("orthopnea" in r for r in negated) and any("leg swelling" in r for r in negated)
    assert len(chunk_note(text, negation=True).offsets) < len(chunks.offsets)  # sentences by default (old checkpoints)
