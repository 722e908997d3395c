"""`python -m core validate`: check a data folder before training."""

from __future__ import annotations

import argparse

from core.cli import add_data_arguments, data_path
from core.errors import InputError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check a data folder before training",
                       description="Check a data folder: the spec, the manifest's columns and labels, that every "
                                   "file exists and parses (units converted, values plausible), classes per split, "
                                   "missingness per modality, labs a tabular group never measures. Prints one table; "
                                   "exit status 1 when something must be fixed.")
    add_data_arguments(p, "data folder with a spec (spec.yaml) and manifest.csv")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from core.data.validate import markdown, validate
    from core.jsonout import dumps

    data = data_path(args)
    if data is None:
        raise InputError("--data", "name the data folder to check (--data DIR, or --spec FILE)")
    report = validate(data, progress=not args.json)
    print(dumps(report) if args.json else markdown(report))
    return 0 if report["ok"] else 1
