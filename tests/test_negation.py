"""Negation in notes: the NegEx-style scope detector, the counterfactual helper, and how negated words
reach the model (their own flagged chunks), with checkpoints trained before negation left as they were."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.data.cohort import scenario
from core.data.cohort.notes import Mention, write_note
from core.data.cohort.sample import BACKGROUND_NOTE
from core.model.negation import is_negated, negate_mention, negated_spans


def words(text: str) -> list[str]:
    return [text[a:b] for a, b in negated_spans(text)]


@pytest.mark.parametrize("text, negated", [
    ("No orthopnoea/PND", ["orthopnoea", "PND"]),
    ("JVP not raised", ["JVP"]),
    ("Pt denies orthopnea or pleuritic pain.", ["orthopnea", "pleuritic pain"]),
    ("Denies fever, chills or SOB.", ["fever", "chills", "SOB"]),
    ("No fever but productive cough", ["fever"]),
    ("tearing chest pain radiating to the back", []),
    ("Normal pulmonary vascularity", []),
    ("no elevated JVP", ["elevated JVP"]),
    ("Pleuritic pain, not tearing.", ["tearing"]),
    ("NO FEVER. Productive cough.", ["FEVER"]),
    ("Heart RRR, JVP not raised, no oedema.", ["JVP", "oedema"]),  # a comma ends a post-trigger's scope
    ("Exam: absent breath sounds right apex.", []),  # a post-trigger opening its clause is a finding
    ("PE not ruled out; no change in effusion.", []),  # pseudo-triggers
    ("Denies any fever.", ["fever"]),
    ("Cough for 3 days. No hemoptysis.\nFever to 38.9", ["hemoptysis"]),
    ("D-dimer negative", ["D-dimer"]),
    ("who presents with chest pain, no fever who reports cough", ["fever"]),
    ("no fever cough sputum chills rigors sweats malaise", ["fever cough sputum chills rigors sweats"]),  # MAX_SCOPE
    ("Denies pain in the chest", ["pain in the chest"]),  # function words inside a scope, not counted
    # real phrasing the cohort never wrote (issue 24): a list goes on only while its items are findings
    ("No fever, productive cough for three days.", ["fever"]),
    ("No chest trauma, sudden tearing chest pain radiating to the back", ["chest trauma"]),
    ("Denies chest pain, has shortness of breath", ["chest pain"]),
    ("Denies fever, chills, night sweats.", ["fever", "chills", "night sweats"]),
    ("Pneumonia was excluded", ["Pneumonia"]),
    ("PE was excluded last year.", ["PE"]),
    ("TB: negative", ["TB"]),
    ("Fever: absent", ["Fever"]),
    ("Cough: denies", ["Cough"]),
    ("Allergies - none.", ["Allergies"]),
    ("Small bowel obstruction, resolved.", ["Small bowel obstruction"]),
    ("There is evidence of a septal infarct with negative deflections.", []),  # a modifier, not a negation
    ("No biliary dilatation and positive for cholecystolithiasis.", ["biliary dilatation"]),
    ("CT to exclude PE.", []),  # hypothetical, not negated
])
def test_negated_spans(text, negated):
    assert words(text) == negated


# Sentences of the NegEx test set (Chapman et al. 2001; chapmanbe/negex, rsAnnotations-1-120-random.txt) with
# their annotation; the whole set is measured by `python -m core negation --negex FILE` (BENCHMARKS.md).
NEGEX_SENTENCES = [
    ("Neurologic - No numbness, tingling, or WEAKNESS.", "weakness", True),
    ("He denies any orthopnea, lower extremity edema, OR CALF PAIN.", "calf pain", True),
    ("HIS SOCIAL HISTORY:  He denies any tobacco, alcohol, or DRUG ABUSE although   he occasionally drinks beer.",
     "drug abuse", True),
    ("Cardiovascular - Regular rate and rhythm, no murmurs, RUBS, gallops.", "rubs", True),
    ("PHYSICAL EXAMINATION:  On examination, the patient is a WELL-DEVELOPED white female in no acute   distress.",
     "well-developed", False),
    ("The LUNGS ARE CLEAR TO AUSCULTATION BILATERALLY, no wheezes or   rales.", "lungs are clear", False),
    ("Positive for chest pain, no PALPITATIONS.", "palpitations", True),
    ("Positive for chest pain, no PALPITATIONS.", "chest pain", False),
    ("Extremities - No CLUBBING, cyanosis,   or edema.", "clubbing", True),
    ("At the time of discharge, the patient had no further   episodes of COFFEE-GROUND EMESIS or any signs of "
     "active bleeding.", "coffee-ground emesis", True),
    ("PARTIAL SMALL BOWEL OBSTRUCTION, resolved.", "partial small bowel obstruction", True),
    ("Her digoxin level is 0.6, which appears   to be subtherapeutic; however, she was not tachycardic, nor was she was "
     "in   ATRIAL FIBRILLATION.", "atrial fibrillation", True),
    ("There is evidence of a SEPTAL INFARCT with negative deflections   and Q waves in the septal leads.",
     "septal infarct", False),
    ("However, due to no evidence of active bleeding, the   patient remained HEMODYNAMICALLY STABLE.",
     "hemodynamically stable", False),
]


@pytest.mark.parametrize("sentence, condition, negated", NEGEX_SENTENCES)
def test_sentences_of_the_public_negex_set(sentence, condition, negated):
    from core.evaluation.negation import locate

    assert is_negated(sentence, *locate(condition, sentence)) == negated


def test_spans_are_sorted_disjoint_and_never_trigger_words():
    text = "Pt denies orthopnea or pleuritic pain. JVP not raised. No orthopnoea/PND, fever or chills."
    spans = negated_spans(text)
    assert spans == sorted(spans)
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(spans, spans[1:]))
    covered = "".join(text[a:b] for a, b in spans).lower()
    assert "denies" not in covered and "not" not in covered and "no " not in covered


def cohort_notes(n: int, seed: int = 1000) -> list[tuple[str, list[Mention]]]:
    """Notes written by the cohort's own generator, with random findings of random diagnoses."""
    out = []
    for i in range(n):
        rng = np.random.default_rng(seed + i)

        def pick(seq, rng=rng):
            return seq[int(rng.integers(0, len(seq)))]

        dx = pick(tuple(scenario.NOTE_EFFECTS))
        findings = {f: {"side": pick(("left", "right"))} for f, p in scenario.NOTE_EFFECTS[dx].items()
                    if rng.random() < p}
        for f, p in BACKGROUND_NOTE.items():
            if f not in findings and rng.random() < p:
                findings[f] = {"side": "left"}
        comorbidities = [c for c in ("hypertension", "diabetes", "copd", "smoker") if rng.random() < 0.3]
        out.append(write_note(rng, dx, findings, int(rng.integers(20, 90)), bool(rng.random() < 0.5),
                              comorbidities, pick))
    return out


def test_agrees_with_the_cohort_ground_truth():
    """Every pertinent negative the cohort writes ("Denies …", "Pt denies …", "No …" joined with "or") is
    negated, and no affirmed finding is touched (measured: 100 % of both on 2,000 notes)."""
    negated = affirmed = neg_ok = aff_ok = 0
    for text, mentions in cohort_notes(500):
        spans = negated_spans(text)
        for m in mentions:
            if m.negated:
                negated += 1
                neg_ok += is_negated(text, m.start, m.end, spans)
            else:
                affirmed += 1
                aff_ok += not any(a < m.end and m.start < b for a, b in spans)
    assert negated > 500 and affirmed > 500
    assert neg_ok / negated >= 0.99 and aff_ok / affirmed >= 0.99, (neg_ok, negated, aff_ok, affirmed)


def test_negate_mention_examples():
    text = "CC: SOB\nHPI: 70 yo M who presents with orthopnea and cough. JVD. Tall thin male."
    i = text.index("orthopnea")
    assert negate_mention(text, i, i + 9) == text.replace("with orthopnea", "with no orthopnea")
    i = text.index("JVD")
    assert negate_mention(text, i, i + 3) == text.replace("JVD.", "No JVD.")
    i = text.index("Tall")
    assert negate_mention(text, i, i + 14) == text.replace("Tall thin male", "No tall thin male")
    t = "w/ PMH of COPD and hx of uncontrolled hypertension who presents"
    i = t.index("hx")
    out = negate_mention(t, i, i + len("hx of uncontrolled hypertension"))
    assert out == t.replace("and hx", "and denies hx")  # "no hx of" would be a trigger of its own
    assert negate_mention(t, i, i + 2) == negate_mention(t, i, i + 2)


def test_negate_mention_negates_every_affirmed_cohort_finding():
    count = 0
    for text, mentions in cohort_notes(150, seed=7):
        for m in mentions:
            if m.negated:
                continue
            out = negate_mention(text, m.start, m.end)
            shift = len(out) - len(text)
            assert is_negated(out, m.start + shift, m.end + shift), (text[m.start:m.end], out)
            count += 1
    assert count > 300


# ---- the representation ---------------------------------------------------------------------------------
def test_chunks_move_negated_words_to_a_flagged_chunk():
    from core.model.backbones import chunk_note, tokenizer

    text = "Pt denies orthopnea or pleuritic pain. JVP not raised."
    plain = chunk_note(text)
    assert plain.negated == [False, False]
    chunks = chunk_note(text, negation=True)
    assert chunks.negated == [False, True, False, True]
    decoded = [tokenizer().decode(ids[m.bool()][1:-1]) for ids, m in zip(chunks.input_ids, chunks.attention_mask)]
    assert decoded == ["pt denies or.", "orthopnea pleuritic pain", "not raised.", "jvp"]
    # every token keeps its place in the note (word attributions map back to characters)
    assert sorted(o for offs in chunks.offsets for o in offs) == sorted(o for offs in plain.offsets for o in offs)
    assert text[chunks.offsets[1][0][0]:chunks.offsets[1][-1][1]] == "orthopnea or pleuritic pain"


def test_embedded_chunks_carry_the_flag_last():
    from core.model.backbones import CHUNK_DIM, TEXT_DIM, embed_texts

    text = "Denies fever, chills or SOB. Productive cough."
    with_neg, without = embed_texts([text, text], 128, 256, negation=True)[0], embed_texts([text], 128, 256)[0]
    assert with_neg.shape == (3, CHUNK_DIM) and without.shape == (2, CHUNK_DIM)
    assert with_neg[:, TEXT_DIM].tolist() == [0.0, 1.0, 0.0] and without[:, TEXT_DIM].tolist() == [0.0, 0.0]
    np.testing.assert_allclose(with_neg[2], without[1], atol=1e-5)  # a sentence without negation is unchanged


def test_text_head_reads_the_flag_only_when_trained_with_negation():
    from core.model.backbones import CHUNK_DIM, TEXT_DIM
    from core.model.encoders import TextHead

    torch.manual_seed(0)
    x = torch.randn(2, 3, CHUNK_DIM)
    x[..., TEXT_DIM] = torch.tensor([0.0, 1.0, 0.0])
    unflagged = x.clone()
    unflagged[..., TEXT_DIM] = 0
    valid = torch.ones(2, 3, dtype=torch.bool)
    old = TextHead(16, 0.0).eval()
    shift, separate = (TextHead(16, 0.0, negation=True, negation_head=h).eval() for h in ("shift", "separate"))
    assert "negated" not in dict(old.named_parameters()) and "negated" in dict(shift.named_parameters())
    assert any(n.startswith("proj_negated") for n, _ in separate.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(old(x, valid), old(unflagged, valid))
        torch.testing.assert_close(old(x, valid), old(x[..., :TEXT_DIM], valid))
        for new in (shift, separate):
            assert not torch.allclose(new(x, valid), new(unflagged, valid))
        # the separate head reads an unflagged note exactly as its affirmed projection does
        separate.proj_negated = None
        plain = separate(unflagged, valid)
    with pytest.raises(ValueError):
        TextHead(16, 0.0, negation=True, negation_head="both")
    assert plain.shape == (2, 16)


def test_cache_key_follows_the_negation_setting():
    from core.features import cache_key
    from core.model.config import ModelConfig

    assert ModelConfig().note_negation is True
    assert cache_key("data", ModelConfig()) != cache_key("data", ModelConfig(note_negation=False))


def test_checkpoints_saved_before_the_setting_load_with_it_off(predictor, tmp_path):
    """A meta.json written before `note_negation` (the stride-16 image features, the separate negation head)
    existed reads with them off, so such a checkpoint chunks notes and reads images as it was trained to; the
    shipped checkpoint was trained with the defaults."""
    from core.checkpoint import read_meta, write_meta
    from core.paths import DEFAULT_CHECKPOINT

    from core.model.config import ModelConfig

    meta = read_meta(DEFAULT_CHECKPOINT)
    model = meta["config"]["model"]
    assert model["note_negation"] is True and model["image_features"] == "stride16"
    assert model["negation_head"] == ModelConfig().negation_head
    head = predictor.model.encoders["note"]
    assert (head.proj_negated is not None) == (model["negation_head"] == "separate")
    for key in ("note_negation", "image_features", "negation_head"):
        del meta["config"]["model"][key]
    write_meta(tmp_path, meta)
    old = read_meta(tmp_path)["config"]["model"]
    assert old["note_negation"] is False and old["image_features"] == "final" and old["negation_head"] == "shift"


def test_a_negation_model_sees_negation_in_prediction_and_attribution(quick_checkpoint):
    """A model trained with negation reads the flags the same way in prediction and in the attribution
    path, and a negated finding changes its prediction."""
    from core.explain.graph import CaseGraph
    from core.inference import Predictor

    p = Predictor.load(quick_checkpoint)
    head = p.model.encoders["note"]
    assert p.model.config.model.note_negation and (head.negated is not None or head.proj_negated is not None)
    note = ("CC: SOB\nHPI: 74 yo M w/ PMH of HTN who presents with worsening dyspnea and orthopnea x4 days. "
            "Pt reports bilateral LE edema.\nExam: elevated JVP. crackles at the right base.")
    i = note.index("orthopnea")
    negated = negate_mention(negate_mention(note, i, i + 9), note.index("elevated JVP") + 3,
                             note.index("elevated JVP") + 15)
    assert "no orthopnea" in negated and "No elevated JVP" in negated
    probs = []
    for text in (note, negated):
        case = p.case(note=text)
        pred = p.predict(case)
        g = CaseGraph(p, case)
        chunks = g.note_chunks("note")
        assert any(chunks.negated) == (text is negated)
        emb, _ = g.note_embeddings(chunks)
        with torch.no_grad():
            via_graph = g.probs_from_note("note", chunks, emb)[0].cpu().numpy()
        np.testing.assert_allclose(via_graph, [pred.probabilities[c] for c in p.classes], atol=1e-4)
        probs.append(via_graph)
    assert not np.allclose(probs[0], probs[1], atol=1e-4)


def test_negation_command_scores_a_negex_file(tmp_path, capsys):
    import json

    from core.cli import main

    rows = ["line number\tCondition\tsentence\tnegation_status\ttemporality\texperiencer"]
    rows += [f"{i}\t{c}\t{s}\t{'Negated' if n else 'Affirmed'}\tRecent\tPatient"
             for i, (s, c, n) in enumerate(NEGEX_SENTENCES, 1)]
    rows.append("99\tmissing condition\tA sentence without it.\tNegated\tRecent\tPatient")
    path = tmp_path / "annotations.txt"
    path.write_text("\n".join(rows) + "\n")
    assert main(["negation", "--negex", str(path), "--json", "--out", str(tmp_path / "out")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["n"], result["not_located"], result["f1"]) == (len(NEGEX_SENTENCES), 1, 1.0)
    assert "| F1 | 1.000 |" in (tmp_path / "out" / "negation.md").read_text()
    (tmp_path / "bad.txt").write_text("not,a,negex,file\n")
    assert main(["negation", "--negex", str(tmp_path / "bad.txt")]) == 2


E3C_XMI = """<?xml version="1.0" encoding="UTF-8"?><xmi:XMI xmlns:xmi="http://www.omg.org/XMI" \
xmlns:cas="http:///uima/cas.ecore" xmlns:type4="http:///de/tudarmstadt/ukp/dkpro/core/api/segmentation/type.ecore" \
xmlns:custom="http:///webanno/custom.ecore" xmi:version="2.0">
    <cas:NULL xmi:id="0"/>
    <type4:Sentence xmi:id="2" sofa="1" begin="0" end="{s1}"/>
    <type4:Sentence xmi:id="3" sofa="1" begin="{b2}" end="{e2}"/>
    <custom:CLINENTITY xmi:id="4" sofa="1" begin="{fever_b}" end="{fever_e}" entityID="C0015967"/>
    <custom:CLINENTITY xmi:id="5" sofa="1" begin="{head_b}" end="{head_e}" entityID="C0018681"/>
    <custom:CLINENTITY xmi:id="6" sofa="1" begin="{rash_b}" end="{rash_e}" entityID="C0015230"/>
    <custom:EVENT xmi:id="7" sofa="1" begin="{fever_b}" end="{fever_e}" contextualModality="ACTUAL" polarity="NEG"/>
    <custom:EVENT xmi:id="8" sofa="1" begin="{head_b}" end="{head_e}" contextualModality="ACTUAL" polarity="POS"/>
    <cas:Sofa xmi:id="1" sofaNum="1" sofaID="_InitialView" mimeType="text" sofaString="{text}"/>
</xmi:XMI>
"""


def test_e3c_layout_reads_entities_with_the_polarity_of_their_events(tmp_path, capsys):
    """E3C's English layer (hltfbk/E3C-Corpus) in its own WebAnno XMI layout: an entity is negated when an event
    over it says NEG, affirmed when POS, left out without an event; offsets are sentence-relative."""
    from core.cli import main
    from core.evaluation.negation import read_e3c, read_negex

    first = "The child had a moderate headache. "
    second = "There was no fever and a faint rash."
    text = first + second
    at = {w: text.index(w) for w in ("headache", "fever", "rash")}
    (tmp_path / "EN1.xml").write_text(E3C_XMI.format(
        s1=len(first) - 1, b2=len(first), e2=len(text), text=text,
        fever_b=at["fever"], fever_e=at["fever"] + 5, head_b=at["headache"], head_e=at["headache"] + 8,
        rash_b=at["rash"], rash_e=at["rash"] + 4))
    rows = read_e3c(tmp_path)
    assert [(r.condition, r.negated) for r in rows] == [("fever", True), ("headache", False)]
    assert rows[0].sentence == second and rows[0].sentence[slice(*rows[0].span)] == "fever"
    assert main(["negation", "--e3c", str(tmp_path), "--json", "--export", str(tmp_path / "e3c.txt")]) == 0
    assert json.loads(capsys.readouterr().out)["f1"] == 1.0
    assert [(r.condition, r.negated) for r in read_negex(tmp_path / "e3c.txt")] == [("fever", True), ("headache", False)]
