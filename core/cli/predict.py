"""`python -m core predict`: diagnose one case from any subset of its modalities."""

from __future__ import annotations

import argparse

from core.cli import absent_list, add_case_arguments, case_sources, print_guard
from core.jsonout import dumps


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict one case (any subset of modalities)",
                       description="Predict the diagnosis of one case. Modalities not given (or named in --absent) "
                                   "are synthesized in latent space; their confidence is reported.")
    add_case_arguments(p)
    p.add_argument("--samples", type=int, help="diffusion samples K (default from the checkpoint)")
    p.add_argument("--steps", type=int, help="DDIM steps (default from the checkpoint)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from core.inference import Predictor

    predictor = Predictor.load(args.checkpoint, args.device)
    case = predictor.case(**case_sources(args))
    absent = absent_list(args.absent)
    result = predictor.predict(case, absent=absent, samples=args.samples, steps=args.steps,
                               allow_domain_mismatch=args.allow_domain_mismatch)
    print_guard(result)
    if args.json:
        print(dumps(result.to_dict()))
        return 0
    caveat = "  [outside what this model was trained on: see the warnings]" if result.outside_training else ""
    print(f"prediction: {result.prediction}  ({result.latency_ms:.0f} ms on {result.device}){caveat}")
    for c, p in sorted(result.probabilities.items(), key=lambda kv: -kv[1]):
        print(f"  {c:<22} {p:6.1%}")
    print(f"present: {', '.join(result.present)}")
    rule = result.next_test_column()  # the ranking's own score, where it is not the chance of change
    for m in result.ranked_missing():
        s = result.synthesized[m]
        print(f"synthesized {m}: synthesis confidence {s['confidence']:.0%} (a {result.chance_of_change(m):.0%} chance "
              f"that acquiring the real {m} changes the answer" + (f"; {rule[0]}: {rule[1][m]})" if rule else ")"))
        if result.assumed_text(m):
            print(f"  {result.assumed_text(m, top=5)}")
    if result.synthesized:  # which to acquire next, or each one's chance where no ranking beat chance
        print(result.next_test_text())
    for w in result.warnings:
        print(f"warning: {w}")
    return 0
