"""`python -m core doctor`: does this machine's device give the answers the CPU gives, and how fast?

On a small generated cohort it trains a `--quick` model on the device, then predicts every test case
under every availability pattern on the device and on the CPU (from the same cached features, and live
from the files for a few cases, so the backbones' precision counts too), explains one case on both, and
compares: the predicted classes must agree except on near-ties, and the probabilities within
`TOLERANCE[device type]`. With `--bench` it also runs the benchmark on the device with the shipped
checkpoint; with `--train-default` it times the training of the default checkpoint there.
"""

from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from core.data.cohort.generate import generate_cohort
from core.data.dataset import Dataset
from core.device import pick_device
from core.evaluation.patterns import availability_patterns, pattern_name
from core.features import dataset_features
from core.inference import Predictor, predict_table
from core.model.config import Config, quick
from core.paths import CONFIGS

# largest allowed |p_device - p_cpu|: float32 heads with TF32 products and bf16 backbones on CUDA
TOLERANCE = {"cpu": 1e-4, "cuda": 3e-2}
NEAR_TIE = 0.05  # top-2 margin under which a class flip between devices is not a failure
LIVE_CASES = 12


def _environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
           "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(gpu=p.name, gpu_memory_gb=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                   cuda=torch.version.cuda)
    return env


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    """Agreement of two (N, C) probability tables: max |difference|, class agreement, flips off near-ties."""
    diff = float(np.abs(a - b).max()) if len(a) else 0.0
    flip = a.argmax(1) != b.argmax(1)
    top2 = np.sort(b, 1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) >= NEAR_TIE
    return {"n": int(len(a)), "max_abs_diff": diff, "class_agreement": float(1 - flip.mean()) if len(a) else 1.0,
            "flips_outside_near_ties": int((flip & clear).sum())}


def doctor(device: str | None = None, data: str | Path | None = None, bench: bool = False,
           train_default: bool = False, progress: bool = True) -> dict:
    from core.explain.explanation import explain_case
    from core.training import train

    dev = pick_device(device)
    tol = TOLERANCE[dev.type]
    report: dict = {"environment": _environment(dev), "tolerance": tol, "near_tie": NEAR_TIE, "checks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(data) if data else generate_cohort(Path(tmp) / "cohort", n=300, seed=3, workers=1,
                                                         progress=False, card=False)
        t = time.perf_counter()
        train(root, quick(Config.load(CONFIGS / "default.yaml"), sampling=True), Path(tmp) / "ckpt", device=str(dev),
              progress=progress)
        report["quick_train_s"] = time.perf_counter() - t
        on_dev, on_cpu = Predictor.load(Path(tmp) / "ckpt", dev), Predictor.load(Path(tmp) / "ckpt", "cpu")
        ds = Dataset.open(root)
        table = dataset_features(ds, on_cpu.model.config.model, "cpu", progress=False)
        te = ds.indices("test")
        complete = te[table.present[te].all(1)]
        names = [n for n, _ in on_cpu.modalities]
        cached, timings = {}, {}
        for pattern in availability_patterns(len(names)):
            drop = np.tile(~np.asarray(pattern), (len(complete), 1))
            t = time.perf_counter()
            pd_ = predict_table(on_dev.model, table, complete, drop, device=dev).probs
            timings[pattern_name(pattern, names)] = (time.perf_counter() - t) * 1000 / max(1, len(complete))
            cached[pattern_name(pattern, names)] = compare(pd_, predict_table(on_cpu.model, table, complete, drop).probs)
        report["checks"]["cached_features"] = cached
        report["ms_per_case_cached"] = timings
        cases = [ds.load(int(i)) for i in complete[:LIVE_CASES]]
        live = {}
        for pattern in availability_patterns(len(names)):
            absent = [n for n, keep in zip(names, pattern) if not keep]
            a = np.array([[p.probabilities[c] for c in on_dev.classes] for p in on_dev.predict_many(cases, absent)])
            b = np.array([[p.probabilities[c] for c in on_cpu.classes] for p in on_cpu.predict_many(cases, absent)])
            live[pattern_name(pattern, names)] = compare(a, b)
        report["checks"]["live_from_files"] = live
        t = time.perf_counter()
        e_dev = explain_case(on_dev, cases[0], absent=[names[-1]])
        report["explain_s"] = time.perf_counter() - t
        e_cpu = explain_case(on_cpu, cases[0], absent=[names[-1]])
        report["checks"]["explanation"] = {
            "same_target": e_dev.target == e_cpu.target, "explains_shown_prediction": e_dev.target == e_dev.prediction.prediction,
            "contribution_max_abs_diff": float(max((abs(a["gradient"] - b["gradient"])  # present modalities only
                                                    for a, b in zip(e_dev.contributions, e_cpu.contributions)
                                                    if a["status"] == "present"), default=0.0))}
    report["passed"] = _passed(report, tol)
    if bench:
        from core.bench import bench as run_bench

        report["bench"] = run_bench(device=str(dev), accuracy=True, app=False, batches=(1, 8, 32, 128))
    if train_default:
        from core.data.cohort.generate import ensure_cohort
        from core.paths import default_cohort_dir

        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            meta = train(ensure_cohort(default_cohort_dir(), progress=False), Config.load(CONFIGS / "default.yaml"),
                         Path(tmp) / "default", device=str(dev), progress=progress)
            report["default_checkpoint"] = {"seconds_with_feature_extraction": time.perf_counter() - t,
                                            "train_seconds": meta["train_seconds"],
                                            "test_auroc": {k: v["auroc"] for k, v in meta["test_metrics"].items()}}
    return report


def _passed(report: dict, tol: float) -> bool:
    rows = [*report["checks"]["cached_features"].values(), *report["checks"]["live_from_files"].values()]
    e = report["checks"]["explanation"]
    return (all(r["max_abs_diff"] <= tol and r["flips_outside_near_ties"] == 0 for r in rows)
            and e["same_target"] and e["explains_shown_prediction"])


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"Device: {env.get('gpu', env['device'])} (torch {env['torch']}); tolerance {report['tolerance']:g}; "
             f"quick training {report['quick_train_s']:.1f} s; explanation {report['explain_s']:.2f} s", "",
             "| check | pattern | cases | max abs diff | class agreement | flips outside near-ties |", "|---|---|---|---|---|---|"]
    for check in ("cached_features", "live_from_files"):
        for k, r in report["checks"][check].items():
            lines.append(f"| {check} | {k} | {r['n']} | {r['max_abs_diff']:.2e} | {r['class_agreement']:.3f} | "
                         f"{r['flips_outside_near_ties']} |")
    e = report["checks"]["explanation"]
    lines += ["", f"Explanation: same class on both devices {e['same_target']}, explains the shown prediction "
              f"{e['explains_shown_prediction']}, largest contribution difference {e['contribution_max_abs_diff']:.2e}.",
              f"**{'PASSED' if report['passed'] else 'FAILED'}**"]
    return "\n".join(lines) + "\n"
