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
