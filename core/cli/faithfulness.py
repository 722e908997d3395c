"""`python -m core faithfulness`: score explanations against the cohort's ground truth and by perturbation."""

from __future__ import annotations

import argparse

from core.cli import TRAINED_ON, add_report_arguments, data_path, write_outputs


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("faithfulness", help="score explanations on the test split (truth and perturbation)",
                       description="Heatmap mass in finding masks, pointing game, top-5 note words and phrases and "
                                   "top-k labs against the evidence, deletion/insertion curves, Integrated Gradients' "
                                   "completeness error per modality and the time of one explanation; with --negation, "
                                   "whether negating a decisive note finding lowers p(diagnosis). Writes "
                                   "faithfulness.json and faithfulness.md (the synthesis confidence: `python -m core calibration`).")
    add_report_arguments(p, "write faithfulness.json and faithfulness.md here (default runs/faithfulness)",
                         "cohort folder with truth/ " + TRAINED_ON)
    p.set_defaults(out="runs/faithfulness")
    p.add_argument("--n", type=int, default=60, help="number of complete test cases to explain (default 60)")
    p.add_argument("--timing-cases", type=int, default=10,
                   help="time one full explanation on this many of them, warm (default 10; 0: skip)")
    p.add_argument("--note-all-words", action="store_true",
                   help="also score the note with every unit's words attributed (slower), beside what the app shows")
    p.add_argument("--negation", action="store_true",
                   help="also negate each decisive note finding of the test notes (core.model.negation) and count how "
                        "often p(diagnosis) drops")
    p.add_argument("--negation-cases", type=int, default=200,
                   help="test cases (with a note) for --negation (default 200)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from core.data.cohort.generate import ensure_cohort
    from core.data.dataset import Dataset
    from core.explain.faithfulness import faithfulness, markdown, negation_counterfactual
    from core.features import split_features
    from core.jsonout import dumps
    from core.inference import Predictor
    from core.paths import default_cohort_dir

    progress = not args.json
    predictor = Predictor.load(args.checkpoint, args.device)
    ds = Dataset.open(data_path(args, checkpoint=True) or ensure_cohort(default_cohort_dir(), progress=progress))
    ds, table = split_features(ds, predictor.model.config.model, "test", predictor.device, progress=progress)
    result = faithfulness(predictor, ds, table, n=args.n, progress=progress, timing_cases=args.timing_cases,
                          note_all_words=args.note_all_words)
    if args.negation:
        note = next((n for n, k in predictor.modalities if k == "text"), None)
        test = [int(i) for i in ds.indices("test") if note is not None and ds.is_present(int(i), note)]
        result["negation"] = negation_counterfactual(predictor, ds, [ds.case_id(i) for i in test[:args.negation_cases]])
    write_outputs(args.out, "faithfulness", result, markdown(result))
    print(dumps(result) if args.json else markdown(result))
    return 0
