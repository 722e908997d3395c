"""`python -m core validate`: check a data folder before training."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check a data folder before training",
                       description="Check a data folder: the spec, the manifest's columns and labels, that every "
                                   "file exists and parses (units converted, values plausible), classes per split, "
                                   "missingness per modality, labs a tabular group never measures. Prints one table; "
                                   "exit status 1 when something must be fixed.")
    p.add_argument("--data", required=True, help="data folder with spec.yaml and manifest.csv")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from core.data.validate import markdown, validate
    from core.jsonout import dumps

    report = validate(args.data, progress=not args.json)
    print(dumps(report) if args.json else markdown(report))
    return 0 if report["ok"] else 1
