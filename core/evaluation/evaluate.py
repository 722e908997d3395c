"""`evaluate()`: train and score every method, then write results (JSON, CSV), tables and figures."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from core.checkpoint import read_meta
from core.data.cohort.generate import ensure_cohort, quick_cohort, redundant_cohort
from core.data.dataset import Dataset
from core.evaluation import figures, report, verdicts
from core.evaluation.harness import RECIPE, Progress, Setup, condition_rows, method_config, run
from core.evaluation.methods import methods_for, select
from core.evaluation.regimes import REGIME_METHODS, case_severity, labelled_rows, limit_complete, regime
from core.evaluation.run_info import code_commit, machine
from core.features import dataset_features
from core.device import pick_device
from core.model.config import QUICK_TRAINING, Config
from core.model.config import quick as quick_config
from core.paths import CONFIGS, DEFAULT_CHECKPOINT, ROOT, default_cohort_dir
from core.jsonout import dumps
from core.names import display_name

# the share of the whole evaluation each stage spans in the fraction `on_progress` hears (the quick
# evaluation on a 2-core CPU: cohort ~5-20 s, encoding ~35 s, models ~2 min, figures ~10 s)
STAGES = {"features": (0.02, 0.2), "models": (0.2, 0.95), "figures": (0.95, 1.0)}


def stage(news: Progress, lo: float, hi: float) -> Progress:
    """The callback of a stage that spans [lo, hi] of the whole."""
    return lambda f, text: news(lo + (hi - lo) * min(max(f, 0.0), 1.0), text)


def evaluate(checkpoint: str | Path | None = None, data: str | Path | None = None, methods: str = "all",
             seeds: int | None = None, out: str | Path | None = None, quick: bool = False, device: str | None = None,
             progress: bool = True, on_step: Callable[[int, int, str], None] | None = None, jobs: int = 1,
             on_progress: Progress | None = None, regime_name: str = "natural", short: bool = False,
             config_path: str | Path | None = None) -> dict:
    """`quick`: the 600-case cohort and the short training schedule; `short`: the short schedule on the full
    cohort (more test cases, so tighter intervals, in a fraction of the full schedule's time). `config_path`:
    the base configuration instead of the checkpoint's (e.g. `python -m core tune`'s tuned.yaml).
    `regime_name`: the missing-data regime (core/evaluation/regimes.py); its default methods are
    REGIME_METHODS when `methods` is 'all' and the regime is not the natural one.
    `jobs` > 1 trains that many models at once in worker processes (CPU only; one torch thread each).
    `on_step(i, n, method)` hears when each model starts; `on_progress(fraction, text)` much more often
    (every chunk of encoded cases, epoch and scored condition: a few seconds apart on a 2-core CPU)."""
    t0 = time.perf_counter()
    out = Path(out) if out else ROOT / "runs" / f"eval-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    news = logged(out, on_progress or (lambda f, text: None))
    dev = pick_device(device)
    chosen_regime = regime(regime_name)
    if chosen_regime.name != "natural" and methods in ("", "all"):
        methods = REGIME_METHODS
    news(0.0, "preparing the data (the first run generates the quick cohort)" if quick and not data else "preparing the data")
    preparing = stage(news, 0.0, STAGES["features"][0])  # only the first run generates anything
    if data and chosen_regime.cohort == "redundant":
        raise ValueError("the redundant regime evaluates on its own cohort variant: leave out the data folder")
    if data:
        data = Path(data)
    elif chosen_regime.cohort == "redundant":
        data = redundant_cohort(quick, on_progress=preparing)
    else:
        data = quick_cohort(on_progress=preparing) if quick else ensure_cohort(default_cohort_dir(), on_progress=preparing)
    encoding = stage(news, *STAGES["features"])
    setup = make_setup(checkpoint, data, quick or short, str(dev), progress,
                       on_cases=lambda done, n: encoding(done / n, f"encoding cases with the frozen backbones: {done} of {n}"),
                       regime_name=chosen_regime.name, config_path=config_path)
    ds, table, config = setup.ds, setup.table, setup.config
    n_seeds = seeds or (1 if quick or short else 3)
    base_seed = config.training.seed
    chosen = select(methods_for(setup.names), methods)
    # an ablation whose device the configuration already leaves out (e.g. rare classes weighted like the others)
    # would train RobustMDiff again under another name: it is left out and named in the result instead
    reference = method_config(setup, next(m for m in chosen if m.name == "robustmdiff"), base_seed)
    same = [m.name for m in chosen if m.kind == "ablation" and method_config(setup, m, base_seed) == reference]
    chosen = [m for m in chosen if m.name not in same]
    labels = {m.name: m.label for m in chosen}
    seed_list = [base_seed + i for i in range(n_seeds)]
    total = len(chosen) * len(seed_list)
    bar = tqdm(total=total, desc="evaluate", unit="model", disable=not progress)
    step = [0]

    def on(name: str) -> None:
        if step[0]:
            bar.update()
        bar.set_postfix_str(name)
        if on_step:
            on_step(step[0], total, name)
        step[0] += 1

    rows, reliability, probs, reused = run(setup, chosen, seed_list, on, parts=out / "parts",
                                   jobs=jobs if dev.type == "cpu" else 1,
                                   worker_args=(checkpoint and str(checkpoint), str(data), quick or short, str(dev), False, None,
                                                chosen_regime.name, config_path and str(config_path)),
                                   on_progress=stage(news, *STAGES["models"]))
    bar.update()
    bar.close()
    names = setup.names
    where = condition_rows(setup)
    write_probabilities(out / "probabilities.npz", probs, where, ds.labels)
    news(STAGES["models"][1], "bootstrapping the differences between methods over seeds and test cases")
    bootstraps = verdicts.bootstraps(probs, where, ds.labels, seed_list, names)
    rare_intervals = report.rare_intervals(probs, where, ds.labels, seed_list, setup.groups().get("rare"))
    result = {
        "regime": chosen_regime.name, "regime_title": chosen_regime.title,
        "created": time.strftime("%Y-%m-%d %H:%M %Z"),  # which model and date a table belongs to (the pages say)
        "commit": code_commit(),  # and which code
        "n_train_complete": int(setup.table.present[ds.indices("train")].all(1).sum()),
        "n_train_labelled": int(len(setup.labelled) if setup.labelled is not None else len(ds.indices("train"))),
        "data": str(data), "data_fingerprint": ds.fingerprint(), "n_test": int(len(ds.indices("test"))),
        "data_name": ds.spec.name, "data_size": int(len(ds)),  # which data, in words (describe.provenance)
        "checkpoint": str(checkpoint) if checkpoint else None,
        "n_test_complete": int(table.present[ds.indices("test")].all(1).sum()), "methods": labels, "seeds": seed_list,
        "quick": quick, "short": short, "config": config.to_dict(), "machine": machine(), "device": str(dev),
        # this run's time; `reused` of the models were saved by earlier runs of the same command (a resumed run)
        "seconds": time.perf_counter() - t0, "models": total, "reused": reused, "rows": rows, "significance": report.significance(rows, names),
        "retention": report.retention(rows, names).to_dict("records"),
        "targets": report.targets(rows, names, bootstraps, config.to_dict()),
        "reliability": reliability, "modalities": names, "bootstraps": bootstraps,
        "bootstrap_natural": bootstraps.get("natural", []), "rare_intervals": rare_intervals,
        "same_as_robustmdiff": {n: display_name(n) for n in same},  # not trained: the configuration makes them it
        "recipe": RECIPE,  # one training recipe for every method, every seed trained fresh (methods.py)
    }
    news(STAGES["models"][1], "writing results and tables")
    (out / "results.json").write_text(dumps(result))
    pd.DataFrame(rows).to_csv(out / "results.csv", index=False)
    (out / "table.md").write_text(markdown(result), encoding="utf-8")
    figs = {"auroc_by_pattern": figures.auroc_by_pattern(rows, names),
            "retention": figures.retention_curve(rows, names),
            "reliability": figures.reliability_diagram(reliability, methods=figures.RELIABILITY_METHODS)}
    result["figures"] = [str(p) for p in figures.write_figures(figs, out, on_figure=stage(news, *STAGES["figures"]))]
    news(1.0, f"done in {time.perf_counter() - t0:.0f} s")
    result["out"] = str(out)
    return result


PROGRESS_LOG = "progress.jsonl"  # in an evaluation's output folder: every piece of news, one JSON object a line
PARENT_ENV = "RMD_STOP_WITH_PARENT"  # a process id: the evaluation stops when that process is gone


def logged(out: Path, news: Progress) -> Progress:
    """`news`, also appended to out/progress.jsonl (fraction, text, time; the first line adds the process's
    torch threads and niceness), which a page polls when the evaluation runs in a process of its own. With
    RMD_STOP_WITH_PARENT set, the evaluation ends at its next news once the process that started it is gone
    (a server killed without running its exit handlers leaves no orphan for more than a few seconds)."""
    log, parent, first = out / PROGRESS_LOG, os.environ.get(PARENT_ENV), [True]

    def on(fraction: float, text: str) -> None:
        if parent and os.getppid() != int(parent):
            raise SystemExit(f"the process that started this evaluation ({parent}) is gone: stopping")
        line = {"fraction": round(float(fraction), 4), "text": text, "time": time.time()}
        if first[0]:
            line |= {"pid": os.getpid(), "threads": torch.get_num_threads(),
                     "nice": os.nice(0) if hasattr(os, "nice") else None}  # os.nice is Unix only
            first[0] = False
        with log.open("a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        news(fraction, text)

    return on


def last_news(out: Path) -> dict:
    """The latest line of an evaluation's progress log ({} before the first one; a line still being written
    is skipped)."""
    try:
        lines = (Path(out) / PROGRESS_LOG).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return {}
    for line in reversed(lines):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return {}


@dataclass
class QuickJob:
    """Heavy work of the app running as a `python -m core` command in a process of its own: a quick evaluation
    (`evaluate --quick`) or the scoring of the open checkpoint (`score`). At low priority (nice 10) and on one
    torch thread, so that a server keeps answering its users meanwhile; its folder (`out`) holds the progress
    log, the log of its output and, at the end, `result_file`."""

    out: Path
    methods: list[str]
    process: subprocess.Popen
    started: float = field(default_factory=time.time)
    kind: str = "quick evaluation"  # what it runs, in words: "quick evaluation" or "scoring"
    result_file: str = "results.json"
    keep: bool = False  # `out` is a checkpoint's own results folder: kept when the next run starts
    checkpoint: str | None = None  # the checkpoint it works on (None: the shipped one)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def news(self) -> dict:
        return last_news(self.out)

    def result(self) -> dict | None:
        """The result file once the run has ended well."""
        path = self.out / self.result_file
        return json.loads(path.read_text(encoding="utf-8")) if self.process.poll() == 0 and path.exists() else None

    def error(self) -> str | None:
        """What went wrong, in its last lines of output, once the run has ended badly (None while it runs)."""
        code = self.process.poll()
        if code is None or code == 0:
            return None
        try:
            tail = (self.out / "output.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-6:]
        except FileNotFoundError:
            tail = []
        reason = "it was stopped" if code < 0 else f"it ended with status {code}"
        return f"The {self.kind} did not finish ({reason}). " + (" / ".join(tail) if tail else "")

    def stop(self, wait: float = 5.0) -> None:
        if self.running:
            self.process.terminate()
            try:
                self.process.wait(wait)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def discard(self) -> None:
        """Remove its folder, unless it is a checkpoint's own results folder."""
        if not self.keep:
            shutil.rmtree(self.out, ignore_errors=True)


_JOB: QuickJob | None = None  # the server's heavy job (quick evaluation or scoring): one at a time per server process
_JOB_LOCK = threading.Lock()  # the one admission to heavy work in a server: every start goes through it
_STARTED = 0  # heavy jobs this server process has started
QUICK_LIMIT = ("Without a study-admin code (RMD_ADMIN_CODE) a server runs one quick evaluation in its lifetime: "
               "every visitor could otherwise keep its CPU busy training. With the code set, each new run asks for it.")


def nice(cmd: list[str]) -> list[str]:
    """A command line under `nice` where the system has it."""
    tool = shutil.which("nice")
    return [tool, "-n", "10", *cmd] if tool else cmd


def data_arguments(data: str | Path | None) -> list[str]:
    """`--data DIR`, or `--data DIR --spec FILE` for a spec file (what OpenModel.data may be)."""
    if not data:
        return []
    path = Path(data)
    return ["--data", str(path.parent), "--spec", path.name] if path.is_file() else ["--data", str(path)]


def quick_command(methods: list[str], out: Path, data: str | Path | None = None,
                  checkpoint: str | Path | None = None) -> list[str]:
    """The command line of a quick evaluation, under `nice` where the system has it. `checkpoint`: a model of
    your own, evaluated on its data (or `data`) with its configuration and the short schedule."""
    cmd = [sys.executable, "-m", "core", "evaluate", "--quick", "--methods", ",".join(["robustmdiff", *methods]),
           "--out", str(out)]
    if checkpoint:
        cmd += ["--checkpoint", str(checkpoint)]
    return nice(cmd + data_arguments(data))


def score_command(checkpoint: str | Path, out: Path, data: str | Path | None = None) -> list[str]:
    """The command line that scores a checkpoint on its test split (`python -m core score`), under `nice`."""
    return nice([sys.executable, "-m", "core", "score", "--checkpoint", str(checkpoint), "--out", str(out), "--json",
                 *data_arguments(data)])


def admit_quick(admin: Callable[[], None] | None, kind: str = "quick evaluation") -> None:
    """Whether a new quick evaluation (or scoring) may start (issue 27: it trains models for minutes, so not on
    every visitor's click): with a study-admin code configured, `admin()` must accept the code given (it raises
    RobustMDiffError otherwise; the page passes core.review.auth's throttled check); without one, only the
    server's first run starts (QUICK_LIMIT)."""
    from core.errors import RobustMDiffError
    from core.review.auth import admin_enabled

    if admin_enabled():
        if admin is None:
            raise RobustMDiffError(f"a new {kind} needs the study-admin code")
        admin()
    elif _STARTED:
        raise RobustMDiffError(f"This server has run its one heavy job (a quick evaluation or scoring): no new {kind} "
                               "without a code. " + QUICK_LIMIT + " Set RMD_ADMIN_CODE and restart the app to run more.")


def _launch(kind: str, admin: Callable[[], None] | None, command: Callable[[Path], list[str]], out: Path | None,
            env: dict[str, str] | None, **job: object) -> tuple[QuickJob, bool]:
    """Start `command(folder)` as the server's one heavy job, unless one is running: (the job, whether it was
    started now). Following the same kind of run needs nothing; another kind running is refused with why; a
    start must pass `admit_quick`. `out`: a folder to keep (a checkpoint's results folder), else a fresh
    temporary one."""
    from core.errors import RobustMDiffError

    global _JOB, _STARTED
    with _JOB_LOCK:
        if _JOB is not None and _JOB.running:
            if _JOB.kind == kind and _JOB.checkpoint == job.get("checkpoint"):
                return _JOB, False
            raise RobustMDiffError(f"A {_JOB.kind} is running on this server (started "
                                   f"{(time.time() - _JOB.started) / 60:.0f} min ago); one runs at a time: try again "
                                   "when it has ended.")
        admit_quick(admin, kind)
        if _JOB is not None:  # the previous run's temporary folder (its results were shown when it ended): not kept
            _JOB.discard()
        if out is None:
            folder = Path(tempfile.mkdtemp(prefix="rmd-quick-evaluation-"))  # unique, even for two runs in one second
        else:
            folder = Path(out)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / PROGRESS_LOG).unlink(missing_ok=True)  # the news of this run only
        env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                            "RMD_FIGURE_PNG": "0", PARENT_ENV: str(os.getpid())} | (env or {})  # page draws figures
        with (folder / "output.log").open("wb") as log:
            process = subprocess.Popen(command(folder), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
        _JOB = QuickJob(folder, process=process, kind=kind, keep=out is not None, **job)  # type: ignore[arg-type]
        _STARTED += 1
        return _JOB, True


def start_quick(methods: list[str], data: str | Path | None = None, env: dict[str, str] | None = None,
                admin: Callable[[], None] | None = None, checkpoint: str | Path | None = None) -> tuple[QuickJob, bool]:
    """Start a quick evaluation of RobustMDiff against `methods` in its own process and folder, unless one is
    running in this server already: (the job, whether it was started now). A start must pass `admit_quick`
    (`admin`: checks the study-admin code given); following a run already going needs nothing. `data`: a data
    folder instead of the 600-case quick cohort; `env`: more environment for the process (e.g. its own
    RMD_DATA_DIR). `checkpoint`: a model of your own (not the shipped one): evaluated on its data with its
    configuration, the results written beside it (core.open_model.evaluation_dir(checkpoint, quick=True)) and
    kept there."""
    from core.open_model import evaluation_dir, is_shipped

    own = checkpoint is not None and not is_shipped(checkpoint)
    args = {"checkpoint": str(checkpoint)} if own else {}  # the tests' stand-ins for quick_command take three
    return _launch("quick evaluation", admin, lambda out: quick_command(methods, out, data, **args),
                   evaluation_dir(checkpoint, quick=True) if own else None, env, methods=list(methods),
                   checkpoint=str(checkpoint) if own else None)


def start_score(checkpoint: str | Path, data: str | Path | None = None, env: dict[str, str] | None = None,
                admin: Callable[[], None] | None = None) -> tuple[QuickJob, bool]:
    """Score `checkpoint` on its data's test split (`python -m core score`, no training: minutes) in a process
    of its own, as `start_quick` runs a quick evaluation (same admission, one heavy job per server); score.json
    is written to core.open_model.score_dir(checkpoint) and kept there."""
    from core.open_model import score_dir

    return _launch("scoring", admin, lambda out: score_command(checkpoint, out, data), score_dir(checkpoint), env,
                   methods=[], result_file="score.json", checkpoint=str(checkpoint))


def current_quick() -> QuickJob | None:
    """The server's latest quick evaluation, running or ended."""
    return _JOB


@atexit.register
def _stop_quick() -> None:  # a server that exits takes its quick evaluation, and its folder, with it
    if _JOB is not None:
        _JOB.stop(wait=2.0)
        _JOB.discard()


def quick_schedule(config: Config) -> Config:
    """The short schedule of --quick, but never longer than the checkpoint's own (a model trained for fewer
    epochs than the quick schedule, e.g. a tiny test model, is not out-trained by its demonstration)."""
    shorter = quick_config(config)
    return shorter.override("training", **{k: min(getattr(shorter.training, k), getattr(config.training, k))
                                           for k in QUICK_TRAINING})


def make_setup(checkpoint: str | None, data: Path, quick: bool, device: str, progress: bool = False,  # quick: schedule
               on_cases: Callable[[int, int], None] | None = None, regime_name: str = "natural",
               config_path: str | None = None) -> Setup:
    """What every model of the evaluation shares: data, cached encoder features, base configuration (the
    checkpoint's, or `config_path`; no trained model of the checkpoint is used), and what the regime changes
    in them (`on_cases(done, total)`: progress of encoding the cases, when they are not cached yet)."""
    dev = torch.device(device)
    ckpt = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
    meta = read_meta(ckpt) if (ckpt / "meta.json").exists() else None
    config = (Config.load(config_path) if config_path else Config.from_dict(meta["config"]) if meta
              else Config.load(CONFIGS / "default.yaml"))
    if quick and not config_path:  # a given configuration is used as written, its schedule included
        config = quick_schedule(config)
    ds = Dataset.open(Path(data))
    r = regime(regime_name)
    table = dataset_features(ds, config.model, dev, progress=progress, on_progress=on_cases)
    if r.complete_share is not None:
        for split in ("train", "val"):
            table = limit_complete(table, ds.indices(split), r.complete_share)
    labelled = labelled_rows(ds.labels, ds.indices("train"), r.label_share) if r.label_share is not None else None
    # no trained model is reused: the checkpoint gives the configuration only, and RobustMDiff's seed 0 is
    # trained fresh like every other (method, seed) (issue 28: the reference is not the model picked for shipping)
    return Setup(ds, table, config, dev, labelled=labelled, severity=case_severity(ds))


def write_probabilities(path: Path, probs: dict[tuple[str, int], dict[str, np.ndarray]],
                        where: dict[str, np.ndarray], labels: np.ndarray) -> None:
    """Every (method, seed, condition)'s per-case probabilities, with each condition's test rows and labels:
    what any later comparison needs (`verdicts.bootstraps`), kept out of results.json for its size."""
    arrays = {f"{m}|{seed}|{c}": p for (m, seed), by_condition in probs.items() for c, p in by_condition.items()}
    arrays |= {f"rows|{c}": idx for c, idx in where.items()} | {f"y|{c}": labels[idx] for c, idx in where.items()}
    np.savez_compressed(path, **arrays)


def markdown(result: dict) -> str:
    """The tables of BENCHMARKS.md (the papers' format: both metrics, ± std in every cell); methods in words."""
    rows, names = result["rows"], result["modalities"]
    ret = report.retention(rows, names)
    ret["method"] = ret.method.map(display_name)
    boots = result.get("bootstraps") or ({"natural": result["bootstrap_natural"]} if result.get("bootstrap_natural") else {})
    lines = ["## Macro AUROC and accuracy (%) under every availability pattern",
             "", f"Test split: {result['n_test_complete']} cases with all modalities, the others switched off per "
             f"pattern; mean ± std over seeds {result['seeds']}. AVG: mean over the patterns. " + report.WILCOXON_NOTE
             + "".join(f" {label}: not trained, because the configuration already leaves its device out, so it would "
                       "be RobustMDiff itself." for label in result.get("same_as_robustmdiff", {}).values()),
             "", report.main_table(rows, names), "",
             "## Retention (share of the all-modalities AUROC kept; first column: that AUROC)", "",
             ret.to_markdown(index=False, floatfmt=".3f"), "", "## Rare vs common classes (natural missingness)", "",
             report.rare_table(rows, result.get("rare_intervals")).to_markdown(index=False, floatfmt=".3f"), "",
             "## Targets", "", report.targets_frame(report.targets(rows, names, boots, result.get("config")) if boots else result["targets"])
             .to_markdown(index=False)]
    for key, rows in boots.items():
        lines += ["", f"## RobustMDiff against each method, {verdicts.bootstrap_kind(rows)}: {verdicts.BOOTSTRAP_SETS[key]}",
                  "", "Difference in macro AUROC (points; + means RobustMDiff is higher), every condition stacked; "
                  "p two-sided. " + verdicts.bootstrap_caption(rows), "",
                  verdicts.bootstrap_frame(rows).to_markdown(index=False, disable_numparse=True)]
    return "\n".join(lines) + "\n"
