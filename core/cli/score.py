"""`python -m core score`: score an existing checkpoint on a data set's test split, without training."""

from __future__ import annotations

import argparse

from core.cli import add_report_arguments, data_path, note_other_data, write_outputs


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="score a checkpoint on the test split under every availability pattern",
                       description="Score an existing checkpoint (no training): AUROC, accuracy and ECE on the test "
                                   "split under every availability pattern, random missingness (30 %%, 50 %%) and "
                                   "natural missingness. Writes score.json and score.md with --out.")
    add_report_arguments(p, "write score.json and score.md here")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from core.data.cohort.generate import ensure_cohort
    from core.evaluation.score import markdown, score_checkpoint
    from core.jsonout import dumps
    from core.paths import default_cohort_dir

    data = data_path(args, checkpoint=True) or ensure_cohort(default_cohort_dir(), progress=not args.json)
    news = None
    if args.out:  # progress news in the output folder, which the app polls when it runs this command (start_score)
        from pathlib import Path

        from core.evaluation.evaluate import logged

        Path(args.out).mkdir(parents=True, exist_ok=True)
        news = logged(Path(args.out), lambda f, text: None)
    result = score_checkpoint(args.checkpoint, data, args.device, progress=not args.json, on_progress=news)
    note_other_data(result["other_data"])
    write_outputs(args.out, "score", result, markdown(result))
    print(dumps(result) if args.json else markdown(result))
    return 0
