"""`python -m core evaluate`: every method under every availability pattern, in the papers' format."""

from __future__ import annotations

import argparse

from core.cli import add_data_arguments, data_path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="compare RobustMDiff with baselines and ablations under missing modalities",
                       description="Train every method with the same harness and encoders, evaluate each on the test "
                                   "split under all 2^M-1 availability patterns, random missingness (30 %%, 50 %%) and "
                                   "natural missingness; write results.json/.csv, table.md and figures.")
    p.add_argument("--checkpoint", help="checkpoint whose config is the base (default: checkpoints/default); its data "
                   "unless --data is given, and the results go beside it (DIR/evaluation, DIR/evaluation-quick with "
                   "--quick), where the app's Robustness lab and Model card show them for that model")
    add_data_arguments(p)
    p.add_argument("--config", help="base configuration instead of the checkpoint's (e.g. tuned.yaml of `core tune`)")
    p.add_argument("--methods", default="all", help="'all' or a comma-separated list, e.g. early_zero,late_fusion")
    p.add_argument("--seeds", type=int, help="training seeds per method (default 3, or 1 with --quick)")
    p.add_argument("--out", help="output folder (default: beside --checkpoint, else runs/eval-<time>); rerunning with "
                   "the same --out resumes from the models already finished there")
    p.add_argument("--quick", action="store_true", help="the short schedule of `train --quick` on the 600-case cohort, "
                   "one seed: one such training per method (each a few minutes on a 2-core CPU, see `train --help`), "
                   "so the time grows with the number of --methods; the features are encoded once for all")
    p.add_argument("--short", action="store_true", help="the short training schedule of --quick on the full cohort "
                   "(one seed): tighter intervals over test cases than --quick in a fraction of the full time (with one seed "
                   "they leave training variance out)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--regime", default="natural", help="missing-data regime: natural (default), complete_5, complete_10, "
                   "complete_20 (that share of complete training cases), mnar (missing not at random at test), "
                   "labels_10 (10 %% of training labels), redundant (a cohort whose modalities share more); methods "
                   "default to RobustMDiff, w/o diffusion, dropout 0.5, masked attention and MUST-style")
    p.add_argument("--regimes", help="instead: every listed regime ('all' or a comma-separated list), one evaluation "
                   "each in --out/<regime>, and regimes.{json,md,html} comparing them")
    p.add_argument("--jobs", type=int, default=1, help="models trained at once in worker processes, one CPU thread "
                   "each (CPU only; e.g. the number of cores)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from core.evaluation.evaluate import evaluate
    from core.evaluation.regime_study import frame, study
    from core.evaluation.regimes import REGIME_METHODS
    from core.open_model import evaluation_dir

    try:
        data = data_path(args, checkpoint=bool(args.checkpoint) and not args.regimes)
        if args.regimes:
            if data or args.checkpoint:
                raise ValueError("--regimes runs on the embedded cohorts and the default configuration")
            result = study(args.regimes, args.quick, args.seeds, args.out,
                           REGIME_METHODS if args.methods == "all" else args.methods, args.device, args.jobs,
                           short=args.short, config_path=args.config)
            print(f"results in {result['out']} ({result['seconds'] / 60:.1f} min)")
            print(frame(result["summary"]).to_string(index=False))
            return 0
        out = args.out or (evaluation_dir(args.checkpoint, args.quick) if args.checkpoint and args.regime == "natural"
                           else None)
        result = evaluate(args.checkpoint, data, args.methods, args.seeds, out, args.quick, args.device,
                          jobs=args.jobs, regime_name=args.regime, short=args.short,
                          config_path=args.config)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"results in {result['out']} ({result['seconds'] / 60:.1f} min)")
    for t in result["targets"]:
        print(f"[{'met' if t['met'] else 'not met'}] {t['target']}: {t['measured']}")
    return 0
