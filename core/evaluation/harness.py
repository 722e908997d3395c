"""Train every method with the same harness and score it on the test split under every availability
pattern, under random missingness at 30 % and 50 %, under missingness not at random (severe and rare
cases miss more, at the same rates) and as the data come (natural missingness). Every condition's
per-case probabilities are kept (`Scored.probs`), so that differences between methods can be
bootstrapped over test cases, patterns and seeds (core/evaluation/bootstrap.py)."""

from __future__ import annotations

import copy
import json
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from core.data.dataset import Dataset
from core.evaluation.methods import Method, methods_for
from core.evaluation.metrics import classification_metrics
from core.evaluation.patterns import availability_patterns, pattern_name, random_missing
from core.evaluation.regimes import MNAR_RATES, mnar_missing
from core.features import FeatureTable
from core.inference import predict_table
from core.model.config import Config
from core.model.robustmdiff import RobustMDiff
from core.names import display_name
from core.training import train_model

log = logging.getLogger(__name__)
RANDOM_RATES = (0.3, 0.5)
GROUPS = ("all", "rare", "common")


@dataclass
class Setup:
    ds: Dataset
    table: FeatureTable
    config: Config
    device: torch.device
    labelled: np.ndarray | None = None  # training rows whose labels may be used (None: all; regime labels_10)
    severity: np.ndarray | None = None  # per case, for the MNAR conditions (every evaluation has it; `score` not)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.table.modalities]

    def groups(self) -> dict[str, list[int] | None]:
        rare = [self.ds.classes.index(c) for c in self.ds.spec.rare_classes]
        common = [i for i in range(len(self.ds.classes)) if i not in rare]
        return {"all": None, "rare": rare, "common": common} if rare else {"all": None}


def restricted(table: FeatureTable, only: str) -> FeatureTable:
    """The same features with every modality but `only` switched off (for single-modality models)."""
    t = copy.copy(table)
    t.present = table.present.copy()
    others = np.array([n != only for n, _ in table.modalities])
    t.present[:, others] = False
    return t


def conditions(setup: Setup, seed: int) -> Iterator[tuple[str, np.ndarray, np.ndarray | None]]:
    """(condition name, test rows, drop mask) for every evaluation condition."""
    te = setup.ds.indices("test")
    complete = te[setup.table.present[te].all(1)]
    for pattern in availability_patterns(len(setup.names)):
        yield pattern_name(pattern, setup.names), complete, np.tile(~np.asarray(pattern), (len(complete), 1))
    for rate in RANDOM_RATES:
        yield f"random_{int(rate * 100)}", complete, random_missing(setup.table.present[complete], rate, 1000 + seed)
    if setup.severity is not None:
        rare = [setup.ds.classes.index(c) for c in setup.ds.spec.rare_classes if c in setup.ds.classes]
        for rate in MNAR_RATES:
            yield f"mnar_{int(rate * 100)}", complete, mnar_missing(
                setup.table.present[complete], setup.ds.labels[complete], setup.severity[complete], rare, rate, 2000 + seed)
    yield "natural", te, None


def n_conditions(setup: Setup) -> int:
    return (len(availability_patterns(len(setup.names))) + len(RANDOM_RATES)
            + (len(MNAR_RATES) if setup.severity is not None else 0) + 1)


Progress = Callable[[float, str], None]  # (fraction done in [0, 1], what is going on)


@dataclass
class Scored:
    """One trained (method, seed): metric rows, natural-missingness probabilities (for reliability plots)
    and every condition's per-case probabilities (float32, rows in `condition_rows` order)."""
    rows: list[dict]
    natural: dict
    probs: dict[str, np.ndarray]


def condition_rows(setup: Setup) -> dict[str, np.ndarray]:
    """The test rows each condition scores (the same for every method and seed)."""
    return {name: idx for name, idx, _ in conditions(setup, 0)}


def score(model: RobustMDiff, setup: Setup, table: FeatureTable, method: str, seed: int,
          on_progress: Progress | None = None) -> Scored:
    rows, natural, kept = [], {}, {}
    total = n_conditions(setup)
    for i, (name, idx, drop) in enumerate(conditions(setup, seed)):
        if on_progress:
            on_progress(i / total, f"scoring: {condition_label(name)} ({i + 1} of {total})")
        probs = predict_table(model, table, idx, drop, seed=seed, device=setup.device, describe=False).probs
        y = setup.ds.labels[idx]
        kept[name] = probs.astype(np.float32)
        if name == "natural":
            natural = {"y": y.tolist(), "probs": probs.tolist()}
        for group, classes in setup.groups().items():
            rows.append({"method": method, "seed": seed, "condition": name, "group": group, "n": int(len(idx)),
                         **classification_metrics(y, probs, classes)})
    return Scored(rows, natural, kept)


def pattern_label(pattern: str) -> str:
    """An availability pattern in words: 'image+labs' → 'Scan + Labs' (names from core.names)."""
    return " + ".join(display_name(n) for n in pattern.split("+"))


def condition_label(condition: str) -> str:
    """An evaluation condition in words: the modalities of a pattern, or how modalities went missing."""
    if condition == "natural":
        return "modalities missing as they come"
    if condition.startswith("random_"):
        return f"{condition[len('random_'):]} % missing at random"
    if condition.startswith("mnar_"):
        return f"{condition[len('mnar_'):]} % missing, more often for severe and rare cases"
    return pattern_label(condition)


def cost(m: Method, config: Config) -> float:
    """Rough time to train and score `m`, relative to a baseline (a model with diffusion: its denoiser,
    fine-tuning on sampled latents, calibration and scoring with samples take ~10× longer)."""
    return 10.0 if m.change(config).diffusion.enabled else 1.0


def run(setup: Setup, methods: list[Method], seeds: list[int], on_step: Callable[[str], None] | None = None,
        parts: Path | None = None, jobs: int = 1, worker_args: tuple | None = None,
        on_progress: Progress | None = None) -> tuple[list[dict], dict, dict[tuple[str, int], dict[str, np.ndarray]], int]:
    """Train and score every (method, seed); returns metric rows, natural probabilities per method (first
    seed), every condition's per-case probabilities per (method, seed) and how many models were read from `parts`.

    With `parts`, each finished (method, seed) is saved there and reused by a rerun on the same data,
    configuration and recipe (`part_stamp`), so that an interrupted multi-hour evaluation resumes where it stopped. With `jobs` > 1,
    models train in that many worker processes, each rebuilding the setup from `worker_args` (the
    arguments of `core.evaluation.evaluate.make_setup`): small models use one CPU core poorly, so
    two single-threaded trainings on two cores finish well before two two-threaded ones in turn.
    `on_progress(fraction, text)` hears about every epoch and scored condition (in worker processes: about
    every finished model only); the fraction weighs each model by its `cost`."""
    stamp = json.loads(json.dumps({"data": setup.ds.fingerprint(), "config": setup.config.to_dict(),
                                   "labelled": None if setup.labelled is None else len(setup.labelled),
                                   "present": int(setup.table.present.sum()), "mnar": setup.severity is not None}))
    done: dict[tuple[str, int], Scored] = {}
    todo: list[tuple[Method, int]] = []
    for seed in seeds:
        for m in methods:
            saved = _read_part(parts, f"{m.name}-seed{seed}", part_stamp(stamp, setup, m, seed)) if parts else None
            if saved:
                done[(m.name, seed)] = saved
            else:
                todo.append((m, seed))

    def finish(m: Method, seed: int, result: Scored) -> None:
        done[(m.name, seed)] = result
        if parts:
            _write_part(parts, f"{m.name}-seed{seed}", part_stamp(stamp, setup, m, seed), result)

    weights = {(m.name, seed): cost(m, setup.config) for m, seed in todo}
    total, finished = sum(weights.values()) or 1.0, [0.0]

    def model_news(m: Method, seed: int) -> Progress | None:
        """The progress of one model as a part of the whole run."""
        if not on_progress:
            return None
        share, head = weights[(m.name, seed)] / total, f"{display_name(m.name)} (seed {seed})"
        return lambda f, text: on_progress(finished[0] + share * f, f"{head}: {text}")

    def model_done(m: Method, seed: int) -> None:
        finished[0] += weights[(m.name, seed)] / total
        if on_progress:
            on_progress(finished[0], f"{display_name(m.name)} (seed {seed}) done")

    for key in list(done):
        if on_step:
            on_step(f"{key[0]} (seed {key[1]}, saved)")
    if jobs > 1 and len(todo) > 1:
        if worker_args is None:
            raise ValueError("jobs > 1 needs worker_args (the arguments of make_setup) to rebuild the setup")
        ctx = multiprocessing.get_context("spawn")  # no fork: torch's thread pools do not survive it
        failed: BaseException | None = None
        with ProcessPoolExecutor(min(jobs, len(todo)), mp_context=ctx, initializer=_init_worker,
                                 initargs=(worker_args,)) as pool:
            futures = {pool.submit(_work, m.name, seed): (m, seed) for m, seed in todo}
            for future in as_completed(futures):
                m, seed = futures[future]
                if on_step:
                    on_step(f"{m.name} (seed {seed}, done)")
                model_done(m, seed)
                try:
                    finish(m, seed, future.result())  # every model that succeeds is saved, even after a failure
                except Exception as e:  # noqa: BLE001 - re-raised below, once the others are saved
                    log.error("training %s (seed %d) failed: %s", m.name, seed, e)
                    failed = failed or e
        if failed:
            raise failed
    else:
        for m, seed in todo:
            if on_step:
                on_step(f"{m.name} (seed {seed})")
            finish(m, seed, train_and_score(setup, m, seed, model_news(m, seed)))
            model_done(m, seed)
    rows: list[dict] = []
    reliability: dict[str, dict] = {}
    for seed in seeds:  # table order, however the models finished
        for m in methods:
            rows += done[(m.name, seed)].rows
            if seed == seeds[0]:
                reliability[m.name] = done[(m.name, seed)].natural
    return rows, reliability, {key: scored.probs for key, scored in done.items()}, len(done) - len(todo)


RECIPE = 2  # the training recipe of methods.py; 2: one recipe for all, every seed fresh (issue 28)


def part_stamp(stamp: dict, setup: Setup, m: Method, seed: int) -> dict:
    """What a saved (method, seed) must match to be reused by a rerun: the run's data and configuration, the
    method's own configuration and the recipe (a part from an older recipe is trained again)."""
    return stamp | {"recipe": RECIPE, "method": json.loads(json.dumps(method_config(setup, m, seed).to_dict()))}


def _write_part(parts: Path, name: str, stamp: dict, result: Scored) -> None:
    """Probabilities first, then the JSON that marks the part done; each written whole, then renamed, so an
    interrupt leaves no half file."""
    parts.mkdir(parents=True, exist_ok=True)
    with open(parts / f"{name}.npz.tmp", "wb") as f:
        np.savez_compressed(f, **result.probs)
    os.replace(parts / f"{name}.npz.tmp", parts / f"{name}.npz")
    tmp = parts / f"{name}.json.tmp"
    tmp.write_text(json.dumps({"stamp": stamp, "rows": result.rows, "natural": result.natural}, default=float))
    os.replace(tmp, parts / f"{name}.json")


def _read_part(parts: Path, name: str, stamp: dict) -> Scored | None:
    try:
        saved = json.loads((parts / f"{name}.json").read_text())
        if saved.get("stamp") != stamp:
            return None
        with np.load(parts / f"{name}.npz") as probs:
            return Scored(saved["rows"], saved["natural"], {k: probs[k] for k in probs.files})
    except (OSError, ValueError, KeyError):  # absent, unreadable or from an older version: trained again
        return None


# share of a model's time spent training (the rest: scoring the test split under every condition)
TRAIN_SHARE = 0.85


def train_and_score(setup: Setup, m: Method, seed: int, on_progress: Progress | None = None) -> Scored:
    """Train `m` fresh for `seed` (every method and seed alike: no checkpoint is reused, issue 28) and score it."""
    table = restricted(setup.table, m.only) if m.only else setup.table
    scoring = on_progress and (lambda f, text: on_progress(TRAIN_SHARE + (1 - TRAIN_SHARE) * f, text))
    training = on_progress and (lambda f, text: on_progress(TRAIN_SHARE * f, f"training, {text}"))
    model = train_model(setup.ds, table, method_config(setup, m, seed), setup.device, progress=False,
                        on_progress=training, labelled=setup.labelled).model
    return score(model, setup, table, m.name, seed, scoring)


def method_config(setup: Setup, m: Method, seed: int) -> Config:
    """The configuration `m` trains with for `seed`: the shared one with the method's change (methods.py)."""
    return m.change(setup.config).override("training", seed=seed)


_worker_setup: Setup | None = None


def _init_worker(worker_args: tuple) -> None:
    global _worker_setup
    from core.evaluation.evaluate import make_setup

    torch.set_num_threads(1)
    _worker_setup = make_setup(*worker_args)


def _work(method: str, seed: int) -> Scored:
    assert _worker_setup is not None
    m = next(m for m in methods_for(_worker_setup.names) if m.name == method)
    return train_and_score(_worker_setup, m, seed)
