"""Check a data folder before training (`python -m core validate`): the spec, the manifest's columns and
labels, every file (read through the same readers training uses), units, classes per split, patients
(the spec's group key) that span splits, missingness per modality, labs a tabular group never measures
and notes that name their own class far more often than other classes' notes do (core/data/leakage.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from core.data.dataset import SPLITS, Dataset
from core.data.leakage import naming_shares
from core.data.quarantine import Quarantine
from core.data.readers import LabPanel
from core.model.config import ModelConfig
from core.model.knowledge import KnowledgeGraph
from core.paths import ROOT


def validate(data: str | Path, progress: bool = False) -> dict:
    """Raises the project's own error for a spec or manifest that cannot be used at all; otherwise reports."""
    from tqdm import tqdm

    ds = Dataset.open(data)
    q = Quarantine()
    names = ds.spec.modality_names
    listed = np.zeros((len(ds), len(names)), bool)
    read = np.zeros_like(listed)
    measured = {m.name: np.zeros(len(ds.spec.lab_features(m.name)), int) for m in ds.spec.modalities if m.type == "tabular"}
    notes_of: dict[str, list[str | None]] = {m.name: [] for m in ds.spec.modalities if m.type == "text"}
    for i in tqdm(range(len(ds)), desc="reading cases", unit="case", disable=not progress):
        listed[i] = [ds.is_present(i, n) for n in names]
        case = ds.load(i, q)
        for j, n in enumerate(names):
            v = case.inputs.get(n)
            read[i, j] = v is not None
            if isinstance(v, LabPanel):
                measured[n] += [lab.name in v.values for lab in ds.spec.lab_features(n)]
            if n in notes_of:
                notes_of[n].append(v)
    modalities = [{"modality": n, "type": ds.spec.modality(n).type, "listed": int(listed[:, j].sum()),
                   "readable": int(read[:, j].sum()), "unreadable": int((listed[:, j] & ~read[:, j]).sum()),
                   "missing_share": float(1 - read[:, j].mean())} for j, n in enumerate(names)]
    counts = pd.crosstab(pd.Series([ds.classes[k] for k in ds.labels], name="class"),
                         pd.Series(ds.splits, name="split")).reindex(index=ds.classes, columns=list(SPLITS), fill_value=0)
    problems, notes = [p.text() for p in q.problems[:20]], []
    dropped = [i + 1 for i in np.flatnonzero(~read.any(1))]
    if dropped:
        problems.append(f"{len(dropped)} case(s) have no readable modality and would be dropped (rows {dropped[:10]})")
    for c in ds.classes:
        if counts.loc[c, "train"] == 0:
            problems.append(f"class '{c}' has no training case")
        elif counts.loc[c, "test"] == 0:
            notes.append(f"class '{c}' has no test case: its test metrics will be missing")
    graph = KnowledgeGraph.load(ROOT / ModelConfig().knowledge_graph, ds.classes)
    names = {c: graph.class_names(c) for c in ds.classes}
    leakage = {n: naming_shares(texts, ds.labels, ds.classes, names) for n, texts in notes_of.items()}
    for n, rows in leakage.items():
        for r in (r for r in rows if r["flagged"]):
            problems.append(f"{r['share_naming_it']:.0%} of the '{r['class']}' cases' {n} name the class "
                            f"({', '.join(names[r['class']][:3])}; other classes' {n}: {r['share_of_other_classes']:.0%}): "
                            f"the {n} may state the answer (written after the finding was known?), which inflates "
                            "every result")
    spanning = ds.groups_across_splits()
    if spanning:
        shown = ", ".join(f"{g} ({'/'.join(s)})" for g, s in list(spanning.items())[:5])
        problems.append(f"{len(spanning)} group(s) of column '{ds.spec.group}' span more than one split, so the same "
                        f"patient is trained on and tested on: {shown}; drop the split column to split by group, or "
                        "fix it")
    elif not ds.spec.group:
        notes.append("the spec names no group key (`group:`, the patient): if a patient can have several cases, "
                     "name it, or one patient's cases may land in both training and test")
    for n, hits in measured.items():
        never = [lab.name for lab, h in zip(ds.spec.lab_features(n), hits) if h == 0]
        if never:
            notes.append(f"tabular modality '{n}' never measures {never}: list the labs it does measure with "
                         f"`features:` on that modality in the spec")
    return {"data": str(data), "cases": len(ds), "groups": len(set(ds.groups)), "groups_across_splits": len(spanning),
            "modalities": modalities, "note_naming": leakage, "classes": counts.to_dict(orient="index"),
            "unreadable": len(q.problems), "problems": problems, "notes": notes, "ok": not problems}


def markdown(report: dict) -> str:
    lines = [f"{report['data']}: {report['cases']} cases of {report['groups']} groups (patients)", "",
             pd.DataFrame(report["modalities"]).to_markdown(index=False, floatfmt=".1%"), "",
             pd.DataFrame(report["classes"]).T.rename_axis("class").to_markdown(), ""]
    for name, rows in report.get("note_naming", {}).items():
        table = pd.DataFrame(rows).rename(columns={"notes": name, "share_naming_it": "naming it: its own",
                                                   "share_of_other_classes": "naming it: other classes'"})
        lines += [f"How often a '{name}' names its class (a leak names it far more often in its own class):", "",
                  table.to_markdown(index=False, floatfmt=".0%"), ""]
    lines += [f"problem: {p}" for p in report["problems"]] + [f"note: {n}" for n in report["notes"]]
    if report["unreadable"] > len([p for p in report["problems"] if p.startswith("manifest row")]):
        lines.append(f"… {report['unreadable']} unreadable inputs in all")
    lines.append("ok: ready to train" if report["ok"] else
                 "not ready: fix the problems above, or train anyway (unreadable inputs then count as missing)")
    return "\n".join(lines)
