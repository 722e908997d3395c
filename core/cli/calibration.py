"""`python -m core calibration`: how far the synthesis confidence, the class probabilities, "which test
next" and the assumed lab values can be trusted, measured on the test split."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.cli import TRAINED_ON, add_report_arguments, data_path, note_other_data, write_outputs


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibration", help="measure confidence and probability calibration on the test split",
                       description="For every pattern with modalities hidden from complete test cases: ECE, AUROC and "
                                   "Brier of the synthesis confidence (the probability that the answer stays the same "
                                   "when the real modality is added), seed sensitivity, class-probability ECE and Brier "
                                   "under natural missingness, 'which test next' agreement, coverage of the assumed lab "
                                   "values' 80 % intervals, and a reliability figure.")
    add_report_arguments(p, "write calibration.json, calibration.md and reliability.png here",
                         "data folder with the test split " + TRAINED_ON)
    p.add_argument("--against", action="append", default=[], metavar="DIR",
                   help="instead: compare the synthesis confidence with confidences that need no generative model, "
                        "of the checkpoint itself (top probability, entropy) and of these comparison checkpoints "
                        "(repeatable; e.g. checkpoints/comparison/dropout_0.5: its entropy and its agreement under "
                        "test-time modality dropout), paired bootstrap over test cases; writes "
                        "confidence_alternatives.json/.md with --out")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from core.calibration.report import calibration_report, markdown, write
    from core.data.cohort.generate import ensure_cohort
    from core.data.dataset import Dataset
    from core.errors import RobustMDiffError
    from core.features import dataset_features
    from core.inference import Predictor
    from core.jsonout import dumps
    from core.paths import default_cohort_dir

    predictor = Predictor.load(args.checkpoint, args.device)
    if predictor.model.denoiser is None:
        raise RobustMDiffError("this checkpoint has no diffusion model, so it synthesizes nothing to calibrate")
    ds = Dataset.open(data_path(args, checkpoint=True) or ensure_cohort(default_cohort_dir(), progress=not args.json))
    note_other_data(ds.identity().difference(predictor.meta.get("data_identity")))
    table = dataset_features(ds, predictor.model.config.model, predictor.device, progress=not args.json)
    if args.against:
        return _alternatives(args, predictor, ds, table)
    report = calibration_report(predictor.model, ds, table, predictor.device)
    if args.out:
        write(report, Path(args.out))
    print(dumps(report) if args.json else markdown(report))
    return 0


def _alternatives(args: argparse.Namespace, predictor, ds, table) -> int:
    """`--against DIR`: the synthesis confidence against non-generative confidences (issue 28)."""
    from core.checkpoint import load_checkpoint
    from core.evaluation.confidence_alternatives import alternatives_report, markdown
    from core.jsonout import dumps

    others = {}
    for folder in args.against:
        model, meta = load_checkpoint(folder, predictor.device)
        if list(model.info.names) != list(predictor.model.info.names) or model.info.classes != predictor.model.info.classes:
            raise SystemExit(f"error: {folder} reads other modalities or classes than the checkpoint")
        others[str(meta.get("method") or Path(folder).name)] = model
    report = alternatives_report(predictor.model, others, ds, table, predictor.device)
    write_outputs(args.out, "confidence_alternatives", report, markdown(report))
    print(dumps(report) if args.json else markdown(report))
    return 0
