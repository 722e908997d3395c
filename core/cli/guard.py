"""`python -m core guard`: how well the checkpoint tells its training domain from everything else, or
(`--fit`) fit its out-of-distribution statistics on the data it was trained on."""

from __future__ import annotations

import argparse

from core.cli import TRAINED_ON, add_report_arguments, data_path, note_other_data, write_outputs


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("guard", help="measure (or --fit) the out-of-distribution guard",
                       description="Measure the guard: false alarms on the test split per modality, and the share of "
                                   "inputs from elsewhere (pydicom's test images, photographs, noise, notes of other "
                                   "specialties, non-medical text, implausible lab tables) that are refused or flagged. "
                                   "With --fit, fit the per-modality statistics and thresholds on the checkpoint's "
                                   "training data and store them in the checkpoint (training does this itself).")
    add_report_arguments(p, "write guard.json and guard.md here",
                         "the data set the checkpoint was trained on " + TRAINED_ON)
    p.add_argument("--fit", action="store_true", help="fit and store the statistics instead of measuring")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from core.checkpoint import attach_guard
    from core.data.cohort.generate import ensure_cohort
    from core.data.dataset import Dataset
    from core.errors import CheckpointError
    from core.features import dataset_features
    from core.guard.benchmark import guard_benchmark, markdown
    from core.inference import Predictor
    from core.jsonout import dumps
    from core.paths import DEFAULT_CHECKPOINT, default_cohort_dir
    from core.guard.ood import fit_data_guard

    predictor = Predictor.load(args.checkpoint, args.device)
    ds = Dataset.open(data_path(args, checkpoint=True) or ensure_cohort(default_cohort_dir(), progress=not args.json))
    other_data = ds.identity().difference(predictor.meta.get("data_identity"))
    if args.fit:
        if other_data:
            raise CheckpointError("the statistics must come from the data the checkpoint was trained on, and on "
                                  f"this data {other_data}; pass that data with --data")
        table = dataset_features(ds, predictor.model.config.model, predictor.device, progress=not args.json)
        guard = fit_data_guard(ds, table)
        attach_guard(args.checkpoint or DEFAULT_CHECKPOINT, guard)
        print(f"stored: thresholds {guard.thresholds}; test false alarms {guard.test_flagged}")
        return 0
    note_other_data(other_data)
    report = guard_benchmark(predictor, ds, progress=not args.json)
    write_outputs(args.out, "guard", report, markdown(report))
    print(dumps(report) if args.json else markdown(report))
    return 0
