"""The command line: `python -m core <command>`; every command has `--help`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from core.errors import InputError, RobustMDiffError

COMMANDS = ("cohort", "train", "predict", "evaluate", "explain", "faithfulness", "calibration", "guard", "score", "validate",
            "importer", "bench", "doctor", "tune", "negation")  # modules of core/cli; importer.py adds the command `import`


def add_case_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of every command that reads one case: checkpoint, the three inputs, what to switch off."""
    p.add_argument("--checkpoint", help="checkpoint folder (default: the shipped checkpoints/default)")
    p.add_argument("--image", help="scan: DICOM, NIfTI, MHA/NRRD, PNG or JPEG")
    p.add_argument("--note", help="clinical note, a text file")
    p.add_argument("--labs", help="lab table, CSV (wide, or long with name,value,unit)")
    p.add_argument("--input", action="append", default=[], metavar="NAME=PATH",
                   help="any modality of the checkpoint's spec by name, e.g. --input vitals=row.csv (repeatable; "
                        "--image, --note and --labs are shortcuts for the first modality of each type)")
    p.add_argument("--absent", default="", help="comma-separated modalities to switch off, e.g. labs,image")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--allow-domain-mismatch", action="store_true",
                   help="use a scan whose DICOM header says it is not what the model was trained on (for example a "
                        "head CT for a chest radiograph model); the result then carries a warning")


def print_guard(result) -> None:  # result: core.prediction.Prediction
    """The warning lines every command that reads one case prints when an input is unlike the training data."""
    for line in result.guard_messages():
        print(f"warning: outside what this model was trained on: {line}", file=sys.stderr)


def case_sources(args: argparse.Namespace) -> dict[str, str]:
    """The inputs of one case by modality name or type shortcut: --image/--note/--labs and --input NAME=PATH."""
    sources = {k: v for k, v in (("image", args.image), ("note", args.note), ("labs", args.labs)) if v}
    for item in args.input:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise InputError("--input", f"'{item}' is not NAME=PATH (for example --input vitals=row.csv)")
        if name.strip() in sources:
            raise InputError("--input", f"modality '{name.strip()}' is given twice")
        sources[name.strip()] = path.strip()
    return sources


TRAINED_ON = "(default: the data the checkpoint was trained on while it is there, else the embedded cohort)"
SPEC_HELP = ("the dataset spec file, when the data folder's spec is not named spec.yaml, spec.json or dataset.yaml "
             "(e.g. --data DIR --spec DIR/mydata.yaml; the manifest is read beside it); --spec alone: its folder "
             "is the data folder")


def add_data_arguments(p: argparse.ArgumentParser, data_help: str = "data set folder (default: the embedded cohort)",
                       ) -> None:
    """`--data DIR` and `--spec FILE`, for every command that reads a data folder; read them with `data_path`."""
    p.add_argument("--data", help=data_help)
    p.add_argument("--spec", metavar="FILE", help=SPEC_HELP)


def data_path(args: argparse.Namespace, checkpoint: bool = False):  # -> Path | None
    """The path to open with `Dataset.open` for `--data`/`--spec`; None when neither is given (the command's
    default data). With `checkpoint`, what the checkpoint (`args.checkpoint`) recorded about its data counts:
    `--data DIR` finds the spec file name it was trained with, and without `--data` the data it was trained on
    is used while it is still there (said on stderr)."""
    from core.data.dataset import recorded_source, resolve_source

    recorded = None
    if checkpoint:
        from core.checkpoint import read_meta
        from core.paths import DEFAULT_CHECKPOINT

        recorded = read_meta(args.checkpoint or DEFAULT_CHECKPOINT).get("data_source")
    path = resolve_source(args.data, args.spec, recorded)
    if path is None and recorded_source(recorded):
        path = recorded_source(recorded)
        print(f"data: {path} (what the checkpoint was trained on; --data to choose other data)", file=sys.stderr)
    return path


def add_report_arguments(p: argparse.ArgumentParser, out_help: str,
                         data_help: str = "data set folder " + TRAINED_ON) -> None:
    """The arguments of every command that measures a checkpoint on a data set and writes a report."""
    p.add_argument("--checkpoint", help="checkpoint folder (default: checkpoints/default)")
    add_data_arguments(p, data_help)
    p.add_argument("--out", help=out_help)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--device", help="cpu or cuda")


def note_other_data(difference: str | None) -> None:
    """Measuring on data other than the training data is allowed; say so, and what differs
    (`Dataset.identity().difference`)."""
    if difference:
        print(f"note: this data is not the data the checkpoint was trained on: {difference}", file=sys.stderr)


def write_outputs(out: str | None, stem: str, data: dict, md: str) -> None:
    """`--out DIR`: <stem>.json (strict JSON) and <stem>.md beside it."""
    if not out:
        return
    from pathlib import Path

    from core.jsonout import dumps

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(dumps(data), encoding="utf-8")
    (folder / f"{stem}.md").write_text(md + "\n", encoding="utf-8")


def absent_list(text: str) -> list[str]:
    return [a.strip() for a in text.split(",") if a.strip()]


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
