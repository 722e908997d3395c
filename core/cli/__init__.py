"""The command line: `python -m core <command>`; every command has `--help`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from core.errors import RobustMDiffError

COMMANDS = ("cohort", "train", "predict", "evaluate", "explain", "faithfulness", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="RobustMDiff: multimodal diagnosis robust to "
                                     "missing data. Research software, not a medical device.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name in COMMANDS:
        importlib.import_module(f"core.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return int(args.run(args) or 0)
    except RobustMDiffError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
