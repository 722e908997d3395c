"""`python -m core tune`: choose hyper-parameters on the validation split only."""

from __future__ import annotations

import argparse

from core.cli import add_data_arguments, data_path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="choose hyper-parameters on the validation split (never the test split)",
                       description="Train RobustMDiff once per value of each parameter (one at a time, the others at "
                                   "the base value), score each by its validation model-selection score, keep the best "
                                   "of each and train them together once more. Writes tune.json, tune.md and "
                                   "tuned.yaml (for `evaluate --config`) into --out.")
    p.add_argument("--grid", action="append", metavar="NAME=V1,V2,...",
                   help="a parameter and its values, repeatable (default: rare_gamma=0,0.5,1; denoiser_width=128,256; "
                        "diffusion_epochs=75,150,300)")
    p.add_argument("--config", help="base configuration (default configs/default.yaml)")
    add_data_arguments(p)
    p.add_argument("--short", action="store_true", help="the short training schedule of `train --quick`: one such training per value of "
                   "the grid (a few minutes each on a 2-core CPU, see `train --help`)")
    p.add_argument("--inference", action="store_true",
                   help="instead: choose the sampler (K samples × DDIM steps) and the calibrator's form on the "
                        "validation split of one trained checkpoint (--checkpoint), with no training: cross-fitted "
                        "over two folds of validation cases (core/evaluation/inference_choice.py); writes "
                        "inference.json, inference.md and tuned.yaml (the checkpoint's configuration with the choice)")
    p.add_argument("--checkpoint", help="with --inference: the trained checkpoint (default: checkpoints/default)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", help="cpu or cuda")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from core.data.cohort.generate import ensure_cohort
    from core.data.dataset import Dataset
    from core.device import pick_device
    from core.evaluation.tuning import DEFAULT_GRID, markdown, parse_grid, tune, write
    from core.jsonout import dumps
    from core.model.config import Config, quick
    from core.paths import CONFIGS, default_cohort_dir

    if args.inference:
        return _inference(args)
    base = Config.load(args.config or CONFIGS / "default.yaml")
    if args.short:
        base = quick(base)
    try:
        grid = parse_grid(args.grid, base) if args.grid else DEFAULT_GRID
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    ds = Dataset.open(data_path(args) or ensure_cohort(default_cohort_dir()))
    result = tune(ds, base, grid, str(pick_device(args.device)),
                  on_progress=lambda f, text: print(f"[{f:4.0%}] {text}", flush=True))
    out = Path(args.out)
    path = write(result, out)
    (out / "tune.json").write_text(dumps(result))
    (out / "tune.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    print(f"chosen: {result['chosen']} → {path}")
    return 0


def _inference(args: argparse.Namespace) -> int:
    """`--inference`: the sampler and the calibrator chosen on one checkpoint's validation split."""
    from pathlib import Path

    from core.data.cohort.generate import ensure_cohort
    from core.data.dataset import Dataset
    from core.errors import RobustMDiffError
    from core.evaluation.inference_choice import inference_choice, markdown
    from core.evaluation.tuning import write
    from core.features import dataset_features
    from core.inference import Predictor
    from core.jsonout import dumps
    from core.paths import default_cohort_dir

    predictor = Predictor.load(args.checkpoint, args.device)
    model = predictor.model
    if model.denoiser is None:
        raise RobustMDiffError("this checkpoint has no diffusion model: it has no sampler to choose")
    ds = Dataset.open(data_path(args, checkpoint=True) or ensure_cohort(default_cohort_dir()))
    table = dataset_features(ds, model.config.model, predictor.device)
    result = inference_choice(model, table, ds.labels, ds.indices("val"), device=predictor.device,
                              on_progress=lambda f, text: print(f"[{f:4.0%}] {text}", flush=True))
    chosen = result["chosen"]
    config = model.config.override("diffusion", samples=chosen["samples"], sample_steps=chosen["steps"]) \
        .override("training", calibrator=chosen["calibrator"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "inference.json").write_text(dumps(result))
    (out / "inference.md").write_text(markdown(result), encoding="utf-8")
    write({"config": config.to_dict()}, out)  # tuned.yaml, as the grid search writes it
    print(markdown(result))
    print(f"chosen: {chosen['samples']} samples × {chosen['steps']} steps, calibrator {chosen['calibrator']} "
          f"(was {result['current']}) → {out / 'tuned.yaml'}")
    return 0
