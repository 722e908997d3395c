"""`python -m core doctor`: check that a device (a GPU) gives the CPU's answers, and measure it there."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.cli import add_data_arguments, data_path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check a device against the CPU: train --quick, predict, explain, compare",
                       description="Trains a --quick model on a small generated cohort on the device, predicts every "
                                   "availability pattern there and on the CPU (from cached features and live from "
                                   "files), explains a case on both and compares classes and probabilities within a "
                                   "tolerance per device type. Exit status 1 when a check fails. `make gpu-check` runs "
                                   "it on CUDA with the benchmark and the default checkpoint's training time.")
    p.add_argument("--device", help="cuda (default when present) or cpu")
    add_data_arguments(p, "data folder to use instead of a generated 300-case cohort")
    p.add_argument("--bench", action="store_true", help="also run the benchmark on the device (shipped checkpoint)")
    p.add_argument("--train-default", action="store_true", help="also time training the default checkpoint there")
    p.add_argument("--out", help="write doctor.json and doctor.md here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from core.doctor import doctor, markdown
    from core.jsonout import dumps

    report = doctor(args.device, data_path(args), args.bench, args.train_default, progress=not args.json)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "doctor.json").write_text(dumps(report), encoding="utf-8")
        (out / "doctor.md").write_text(markdown(report), encoding="utf-8")
    print(dumps(report) if args.json else markdown(report))
    return 0 if report["passed"] else 1
