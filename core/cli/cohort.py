"""`python -m core cohort`: write the embedded multimodal cohort to a folder."""

from __future__ import annotations

import argparse
import time

from core.data.cohort.generate import DEFAULT_IMAGE_SIZE, DEFAULT_N, DEFAULT_SEED, generate_cohort


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cohort", help="generate the embedded cohort (images, notes, labs, truth, manifest, card)",
                       description="Generate the embedded acute-chest cohort: deterministic from --seed, written as "
                                   "real files with a manifest.csv, spec.yaml and DATASET_CARD.md.")
    p.add_argument("--out", required=True, help="output folder (replaced if it holds a cohort)")
    p.add_argument("--n", type=int, default=DEFAULT_N, help=f"number of cases (default {DEFAULT_N})")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})")
    p.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE, help="image side in pixels (default 128)")
    p.add_argument("--no-card", action="store_true", help="skip the dataset card (its separability models)")
    p.add_argument("--workers", type=int, default=2, help="processes used to draw cases (default 2)")
    p.add_argument("--redundancy", type=float, default=0.0,
                   help="0..1: how much the modalities share (shared silences, findings more reliable); "
                        "default 0, the standard cohort (issue 17, regime d)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    t = time.perf_counter()
    if args.n < 50:
        raise SystemExit("error: --n must be at least 50")
    if not 0.0 <= args.redundancy <= 1.0:
        raise SystemExit("error: --redundancy must lie in [0, 1]")
    out = generate_cohort(args.out, n=args.n, seed=args.seed, image_size=args.image_size, workers=args.workers,
                          card=not args.no_card, redundancy=args.redundancy)
    print(f"wrote {args.n} cases to {out} in {time.perf_counter() - t:.1f} s"
          + ("" if args.no_card else f"; see {out / 'DATASET_CARD.md'}"))
    return 0
