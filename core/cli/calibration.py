"""`python -m core calibration`: how far the synthesis confidence, the class probabilities, "which test
next" and the assumed lab values can be trusted, measured on the test split."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.cli import TRAINED_ON, add_report_arguments, data_path, note_other_data


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibration", help="measure confidence and probability calibration on the test split",
                       description="For every pattern with modalities hidden from complete test cases: ECE, AUROC and "
                                   "Brier of the synthesis confidence (the probability that the answer stays the same "
                                   "when the real modality is added), seed sensitivity, class-probability ECE and Brier "
                                   "under natural missingness, 'which test next' agreement, coverage of the assumed lab "
                                   "values' 80 % intervals, and a reliability figure.")
    add_report_arguments(p, "write calibration.json, calibration.md and reliability.png here",
                         "data folder with the test split " + TRAINED_ON)
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
    report = calibration_report(predictor.model, ds, table, predictor.device)
    if args.out:
        write(report, Path(args.out))
    print(dumps(report) if args.json else markdown(report))
    return 0
