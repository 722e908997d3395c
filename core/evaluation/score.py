"""Score an existing checkpoint without training (`python -m core score`): the test split under every
availability pattern, random missingness and natural missingness, with the harness the evaluation uses."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from core.data.dataset import Dataset
from core.errors import SpecError
from core.evaluation.harness import Progress, Setup, score
from core.features import dataset_features
from core.inference import Predictor


def score_checkpoint(checkpoint: str | Path | None, data: str | Path, device: str | None = None,
                     progress: bool = False, on_progress: Progress | None = None) -> dict:
    """`on_progress(fraction, text)`: news while the cases are encoded (first half) and scored (second half),
    which the app polls when it runs the scoring in a process of its own."""
    news = on_progress or (lambda f, text: None)
    news(0.0, "loading the checkpoint")
    predictor = Predictor.load(checkpoint, device)
    ds = Dataset.open(data)
    if [m.name for m in ds.spec.modalities] != [n for n, _ in predictor.modalities]:
        raise SpecError("data", f"has modalities {ds.spec.modality_names}; the checkpoint reads "
                                f"{[n for n, _ in predictor.modalities]}")
    if list(ds.classes) != predictor.classes:
        raise SpecError("data", f"has classes {list(ds.classes)}; the checkpoint predicts {predictor.classes}")
    table = dataset_features(ds, predictor.model.config.model, predictor.device, progress=progress,
                             on_progress=lambda done, n: news(0.5 * done / n, f"encoding cases: {done} of {n}"))
    setup = Setup(ds, table, predictor.model.config, torch.device(predictor.device))
    rows = score(predictor.model, setup, table, "checkpoint", seed=0,
                 on_progress=lambda f, text: news(0.5 + 0.5 * f, text)).rows
    out: dict = {"checkpoint": str(checkpoint or "checkpoints/default"), "data": str(data), "rows": rows,
                 "n_test": int(len(ds.indices("test"))),
                 "other_data": ds.identity().difference(predictor.meta.get("data_identity"))}
    if predictor.guard is not None:
        out["ood_flagged_on_test"] = predictor.guard.flag_rates(table, ds.indices("test"))
    news(1.0, "done")
    return out


def markdown(result: dict) -> str:
    df = pd.DataFrame(result["rows"])
    df = df[df.group == "all"][["condition", "n", "auroc", "accuracy", "ece"]]
    lines = [f"Test split of {result['data']}: AUROC, accuracy and ECE of {result['checkpoint']} with every "
             "availability pattern (complete test cases, the others switched off), random missingness of 30 % "
             "and 50 %, and the natural missingness of the data.", "",
             df.to_markdown(index=False, floatfmt=".3f")]
    if "ood_flagged_on_test" in result:
        lines += ["", "Out-of-distribution flags on the test split (false alarms when the test split is like the "
                      "training data): " + ", ".join(f"{m} {v:.1%}" for m, v in result["ood_flagged_on_test"].items())]
    return "\n".join(lines)
