"""`python -m core faithfulness`: score explanations against the cohort's ground truth and by perturbation."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("faithfulness", help="score explanations on the test split (truth and perturbation)",
                       description="Heatmap mass in finding masks, pointing game, top-k note words and labs against "
                                   "the evidence, and deletion/insertion curves (the synthesis confidence: `python -m core calibration`).")
    p.add_argument("--checkpoint", help="checkpoint folder (default: checkpoints/default)")
    p.add_argument("--data", help="cohort folder with truth/ (default: the embedded cohort)")
    p.add_argument("--n", type=int, default=60, help="number of complete test cases to explain (default 60)")
    p.add_argument("--out", default="runs/faithfulness", help="output folder")
    p.add_argument("--device", help="cpu or cuda")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from core.data.cohort.generate import ensure_cohort
    from core.data.dataset import Dataset
    from core.explain.faithfulness import faithfulness, markdown, write
    from core.features import dataset_features
    from core.inference import Predictor
    from core.paths import default_cohort_dir

    predictor = Predictor.load(args.checkpoint, args.device)
    ds = Dataset.open(args.data or ensure_cohort(default_cohort_dir()))
    table = dataset_features(ds, predictor.model.config.model, predictor.device)
    result = faithfulness(predictor, ds, table, n=args.n)
    write(result, Path(args.out))
    print(markdown(result))
    return 0
