"""Notes that state the answer (issue 24): class names counted per class against the other classes, and a
note-only test AUROC far above the other modalities reported after training."""

from __future__ import annotations

import numpy as np

from core.data.leakage import naming_shares, note_alone_leak
from core.model.knowledge import KnowledgeGraph
from core.paths import ASSETS


def test_synonyms_come_from_the_knowledge_graph_and_abbreviations_keep_their_case():
    graph = KnowledgeGraph.load(ASSETS / "knowledge_graph.yaml", ["pulmonary_embolism", "edema"])
    assert {"PE", "pulmonary embolism"} <= set(graph.class_names("pulmonary_embolism"))
    assert graph.class_names("edema") == ("edema",)  # a class the graph does not know: its own name
    notes = ["Large PE in the right main artery.", "Type 2 DM, no acute process.", "pe on type", None,
             "Pulmonary embolism was excluded.", "Clear lungs."]
    labels = np.array([0, 1, 1, 0, 1, 1])
    rows = naming_shares(notes, labels, ["pulmonary_embolism", "edema"],
                         {c: graph.class_names(c) for c in ("pulmonary_embolism", "edema")})
    pe = rows[0]
    assert (pe["notes"], pe["share_naming_it"], pe["share_of_other_classes"]) == (1, 1.0, 0.25)
    assert pe["flagged"]  # 100 % of its own notes against 25 % of the others'
    assert not rows[1]["flagged"] and rows[1]["share_naming_it"] == 0


def test_a_note_alone_far_above_the_other_modalities_is_reported():
    mods = [("image", "image"), ("note", "text"), ("labs", "tabular")]
    leaky = {"image": {"auroc": 0.80}, "note": {"auroc": 0.99}, "labs": {"auroc": 0.85}}
    assert "'note' alone reaches test AUROC 0.990, 0.14 above" in note_alone_leak(leaky, mods)
    assert note_alone_leak({**leaky, "labs": {"auroc": 0.93}}, mods) is None  # the others are close: no warning
    assert note_alone_leak({**leaky, "note": {"auroc": 0.90}}, mods) is None
