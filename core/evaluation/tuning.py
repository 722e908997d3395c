"""Hyper-parameters chosen on the validation split only (`python -m core tune`, issue 17).

One parameter at a time, from the base configuration: RobustMDiff is trained once per value, and each
value is scored by the training's own model-selection score on validation (macro AUROC as the data come
and with modalities hidden at random, averaged). The best value of each parameter is kept, and the
combination is trained once more and scored the same way. The test split is never read, so that an
evaluation with the chosen configuration stays an honest test. A one-at-a-time sweep is cheaper than the
full grid (the sum of the value counts instead of their product) and misses interactions, which the
combined run at least checks. Validation both stops each training early and ranks the values, so the
validation scores reported are optimistic; the test split stays untouched.
"""

from __future__ import annotations

import time
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

import yaml

from core.data.dataset import Dataset
from core.features import dataset_features
from core.model.config import Config, DiffusionConfig, ModelConfig, TrainingConfig
from core.training import train_model

# what issue 17 names: rare-disease sampling γ, denoiser size, training length
DEFAULT_GRID = {"rare_gamma": [0.0, 0.5, 1.0], "denoiser_width": [128, 256], "diffusion_epochs": [75, 150, 300]}
SECTIONS = {"model": ModelConfig, "diffusion": DiffusionConfig, "training": TrainingConfig}


def section_of(param: str) -> str:
    found = [name for name, klass in SECTIONS.items() if param in {f.name for f in fields(klass)}]
    if len(found) != 1:
        raise ValueError(f"unknown parameter {param!r}" if not found else f"{param!r} is in several sections: {found}")
    return found[0]


def parse_grid(specs: list[str], base: Config) -> dict[str, list[Any]]:
    """['rare_gamma=0,0.5,1', ...] → {'rare_gamma': [0.0, 0.5, 1.0]}, each value of the base value's type."""
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        name, _, values = spec.partition("=")
        name = name.strip()
        kind = type(getattr(getattr(base, section_of(name)), name))
        if not values.strip():
            raise ValueError(f"{name}: no values (write e.g. {name}=1,2)")
        try:
            grid[name] = [(v.strip().lower() in ("1", "true", "yes")) if kind is bool else kind(v.strip())
                          for v in values.split(",")]
        except ValueError:
            raise ValueError(f"{name}: values must be {kind.__name__}, got {values!r}") from None
    return grid


def with_values(config: Config, values: dict[str, Any]) -> Config:
    for name, value in values.items():
        config = config.override(section_of(name), **{name: value})
    return config


def tune(ds: Dataset, base: Config, grid: dict[str, list[Any]], device: str = "cpu",
         on_progress: Callable[[float, str], None] | None = None) -> dict:
    """Every value of every parameter (the others at their base value), then the best of each together.
    A configuration met twice (a value equal to the base one, or a combination already trained) is trained
    once; its second run costs 0 s."""
    news = on_progress or (lambda f, text: None)
    runs = [(name, value) for name, values in grid.items() for value in values]
    total = len(runs) + 1
    scores: dict[Config, float] = {}

    def score(config: Config) -> tuple[float, float]:
        t0 = time.perf_counter()
        if config not in scores:
            # features are keyed by the model settings that shape them: encoded once per distinct setting
            table = dataset_features(ds, config.model, device, progress=False)
            scores[config] = float(train_model(ds, table, config, device, progress=False).val_score)
        return scores[config], time.perf_counter() - t0

    rows = []
    for i, (name, value) in enumerate(runs):
        news(i / total, f"{name} = {value} ({i + 1} of {total})")
        val_score, seconds = score(with_values(base, {name: value}))
        rows.append({"parameter": name, "value": value, "val_score": val_score, "seconds": seconds})
    chosen = {name: max((r for r in rows if r["parameter"] == name), key=lambda r: r["val_score"])["value"]
              for name in grid}
    news(len(runs) / total, f"the chosen values together ({total} of {total})")
    combined_score, combined_seconds = score(with_values(base, chosen))
    news(1.0, "done")
    return {"rows": rows, "chosen": chosen, "combined_val_score": combined_score, "combined_seconds": combined_seconds,
            "base": {n: getattr(getattr(base, section_of(n)), n) for n in grid},
            "config": with_values(base, chosen).to_dict(), "n_val": int(len(ds.indices("val")))}


def write(result: dict, out: Path) -> Path:
    """The chosen configuration as YAML (tuned.yaml, for `evaluate --config`); returns its path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "tuned.yaml"
    path.write_text("# chosen on validation by `python -m core tune` (core/evaluation/tuning.py)\n"
                    + yaml.safe_dump(result["config"], sort_keys=False), encoding="utf-8")
    return path


def markdown(result: dict) -> str:
    lines = ["| parameter | value | validation score | minutes |", "|---|---|---|---|"]
    lines += [f"| {r['parameter']} | {r['value']}{' (base)' if r['value'] == result['base'][r['parameter']] else ''}"
              f"{' **chosen**' if r['value'] == result['chosen'][r['parameter']] else ''} | {r['val_score']:.4f} | "
              f"{r['seconds'] / 60:.1f} |" for r in result["rows"]]
    lines += [f"| all chosen together | {result['chosen']} | {result['combined_val_score']:.4f} | "
              f"{result['combined_seconds'] / 60:.1f} |"]
    return "\n".join(lines) + "\n"
