"""`python -m core train`: train RobustMDiff on the embedded cohort or your own data, write a checkpoint."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from core.model.config import Config
from core.paths import CONFIGS, ROOT, default_cohort_dir

def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model and write a checkpoint folder",
                       description="Train RobustMDiff (three phases, see core/training.py) and write a checkpoint "
                                   "(model.safetensors + meta.json with config, classes, data fingerprint, test metrics). "
                                   "Several processes or machines: torchrun --nproc_per_node N -m core train ...")
    p.add_argument("--config", default=str(CONFIGS / "default.yaml"), help="config YAML (default configs/default.yaml)")
    p.add_argument("--data", help="data set folder with spec.yaml + manifest.csv (default: the embedded cohort, "
                                  "generated on first use)")
    p.add_argument("--out", help="checkpoint folder to write (default runs/<time>)")
    p.add_argument("--seed", type=int, help="random seed (overrides the config)")
    p.add_argument("--quick", action="store_true", help="a few epochs on a 600-case cohort: a smoke test in about a minute")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--strict", action="store_true",
                   help="abort at the first unreadable input (default: count it as missing for that case, drop a "
                        "case left with nothing, and list them all in <out>/data_report.json)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from core.data.cohort.generate import ensure_cohort, quick_cohort
    from core.model.config import quick
    from core.training import train

    config = Config.load(args.config)
    if args.seed is not None:
        config = config.override("training", seed=args.seed)
    if args.quick:
        config = quick(config)
    data = Path(args.data) if args.data else quick_cohort() if args.quick else ensure_cohort(default_cohort_dir())
    out = Path(args.out) if args.out else ROOT / "runs" / time.strftime("%Y%m%d-%H%M%S")
    command = "python -m core " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    meta = train(data, config, out, device=args.device, command=command, strict=args.strict)
    if meta is None:  # a torchrun process other than rank 0: rank 0 reports
        return 0
    m = meta["test_metrics"]
    on = f"{meta['device']}" + (f", {meta['processes']} processes" if meta["processes"] > 1 else "")
    print(f"checkpoint written to {out} ({meta['train_seconds']:.0f} s on {on})")
    print("test macro AUROC: " + ", ".join(f"{k} {v['auroc']:.3f}" for k, v in m.items()))
    return 0
