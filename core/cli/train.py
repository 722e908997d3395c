"""`python -m core train`: train RobustMDiff (or one of its comparison models) on the embedded cohort or
your own data, write a checkpoint."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from core.cli import add_data_arguments, data_path
from core.errors import InputError
from core.model.config import Config
from core.paths import CONFIGS, ROOT, default_cohort_dir

REFERENCE = "robustmdiff"
# Measured (issues 29 and 26): `train --quick`, wall time of the whole command on a 2-core CPU shared with other work
# (load average 1.5-2.5 from it), features already cached unless said. Issue 26's sets come from the embedded cohort's
# manifest: its lab values as three inline tabular groups (inflammation, cardiac, chemistry), and its notes alone.
QUICK_HELP = ("the short schedule (phase 1: 6 epochs, phase 2: 20, phase 3: 3, early stopping; 8 diffusion samples "
              "per prediction instead of the config's 40, recorded in the checkpoint's config) on the 600-case "
              "embedded cohort, or on --data: a smoke test of the pipeline, not a model to use. Its time grows with "
              "the cases, the modalities (encoding an image or a note costs far more than a lab group) and the epochs; "
              "the first run also encodes every case with the frozen backbones (cached afterwards), and every run ends "
              "with the calibration, test metrics under every availability pattern, the calibration report and the "
              "guard, which predict every validation and test case from every subset of its modalities. Measured on "
              "a 2-core CPU with OMP_NUM_THREADS=1 (unset: 1.7 min and 18 s): 2,329 tabular cases in 3 groups "
              "1.7 min (epochs 41 s, calibration 21 s, test metrics and report 22 s; 6.1 min before issue 26, 85 %% "
              "of it after the epochs); 2,219 notes alone 22 s, plus 2.2 min encoding them the first time; the 600-case cohort (image, note, labs) 44 s before issue 26. The full "
              "schedule (40/150/30 epochs, 40 samples) on those 2,329 cases: about 10 min (epochs about 5.5 min, "
              "calibration 2.4 min, report 2 min). Other work on the same cores multiplies these (35 min was seen for "
              "2,139 tabular cases before issue 26)")


def trainable_methods(modalities: list[str] | None = None) -> list:
    """The methods `train --method` can write a checkpoint for: every method of the evaluation
    (core/evaluation/methods.py) but the single-modality ones, which read a restricted feature table."""
    from core.evaluation.methods import methods_for

    return [m for m in methods_for(modalities or []) if m.only is None]


def add_parser(sub: argparse._SubParsersAction) -> None:
    names = ", ".join(m.name for m in trainable_methods())
    p = sub.add_parser("train", help="train a model and write a checkpoint folder",
                       description="Train RobustMDiff (three phases, see core/training.py) and write a checkpoint "
                                   "(model.safetensors + meta.json with config, classes, data fingerprint, test metrics). "
                                   "--method trains a comparison model of the evaluation instead (same harness, same "
                                   "data; only the way missing modalities are handled differs), e.g. the ones the "
                                   "explanation review compares: python -m core train --method late_fusion --out "
                                   "checkpoints/comparison/late_fusion. "
                                   "Several processes or machines: torchrun --nproc_per_node N -m core train ...")
    p.add_argument("--config", default=str(CONFIGS / "default.yaml"), help="config YAML (default configs/default.yaml)")
    p.add_argument("--method", default=REFERENCE, metavar="NAME",
                   help=f"which model to train (default {REFERENCE}); a comparison model of the evaluation: {names}. "
                        "meta.json records it as 'method'")
    add_data_arguments(p, "data set folder with a spec (spec.yaml) and manifest.csv (default: the embedded cohort, "
                          "generated on first use); meta.json records the spec file, so later commands find it again")
    p.add_argument("--out", help="checkpoint folder to write (default runs/<time>)")
    p.add_argument("--seed", type=int, help="random seed (overrides the config)")
    p.add_argument("--quick", action="store_true", help=QUICK_HELP)
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--strict", action="store_true",
                   help="abort at the first unreadable input (default: count it as missing for that case, drop a "
                        "case left with nothing, and list them all in <out>/data_report.json)")
    p.set_defaults(run=run)


def method_named(name: str):
    methods = {m.name: m for m in trainable_methods()}
    if name not in methods:
        raise InputError("--method", f"unknown method {name!r}; choose one of {', '.join(methods)}")
    return methods[name]


def record_method(out: Path, method: str) -> None:
    """Write the method into the checkpoint's meta.json (its checksum recomputed over what is written)."""
    import json

    from core.checkpoint import META, write_meta, read_meta

    read_meta(out)  # checks it first; the file is then rewritten as saved (read_meta fills legacy defaults in)
    meta = json.loads((out / META).read_text(encoding="utf-8"))
    meta["method"] = method
    write_meta(out, meta)


def run(args: argparse.Namespace) -> int:
    from core.data.cohort.generate import ensure_cohort, quick_cohort
    from core.model.config import quick
    from core.training import train

    method = method_named(args.method)  # before any data is generated: a typo fails at once
    config = Config.load(args.config)
    if args.seed is not None:
        config = config.override("training", seed=args.seed)
    if args.quick:
        config = quick(config, sampling=True)
    config = method.change(config)  # as core/evaluation/harness.py does
    data = data_path(args) or (quick_cohort() if args.quick else ensure_cohort(default_cohort_dir()))
    out = Path(args.out) if args.out else ROOT / "runs" / time.strftime("%Y%m%d-%H%M%S")
    command = "python -m core " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    meta = train(data, config, out, device=args.device, command=command, strict=args.strict,
                 schedule="quick" if args.quick else "full")
    if meta is None:  # a torchrun process other than rank 0: rank 0 reports
        return 0
    record_method(out, method.name)
    m = meta["test_metrics"]
    on = f"{meta['device']}" + (f", {meta['processes']} processes" if meta["processes"] > 1 else "")
    print(f"{method.label} checkpoint written to {out} ({meta['train_seconds']:.0f} s on {on})")
    print("test macro AUROC: " + ", ".join(f"{k} {v['auroc']:.3f}" for k, v in m.items()))
    return 0
