"""One warm explanation per demo case, on one torch thread, as a page's worker computes it (issue 25):

    python -m tools.explain_timing [--checkpoint DIR] [--json OUT]

For every demo case of the open checkpoint: with every modality given, then with each modality switched off in
turn (the rest explained, the missing one synthesized), the wall seconds of the whole explanation (Integrated
Gradients, the default) and of each stage as `explain_case` reports it (contributions, labs, image, note), after
one warm-up explanation. Prints per-case lines and the median and maximum per availability; numbers go to
BENCHMARKS.md with the machine named.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from core.data.dataset import Dataset
    from core.demo import demo_cases
    from core.explain.explanation import explain_case
    from core.inference import Predictor
    from core.paths import default_cohort_dir

    predictor = Predictor.load(args.checkpoint)
    ds = Dataset.open(default_cohort_dir())
    cases = [ds.load(d.row) for d in demo_cases(ds)]
    names = [n for n, _ in predictor.modalities]
    explain_case(predictor, cases[0])  # warm-up: backbones loaded, first-call allocations done
    out: dict[str, dict] = {}
    for case in cases:
        for absent in ((), *((n,) for n in names)):
            marks, stages = [time.perf_counter()], []

            def on_stage(stage: str, _exp) -> None:
                marks.append(time.perf_counter())
                stages.append(stage)

            exp = explain_case(predictor, case, absent=absent, on_stage=on_stage)
            label = "all given" if not absent else f"{absent[0]} missing"
            row = {"seconds": marks[-1] - marks[0], **dict(zip(stages, np.diff(marks).tolist())),
                   "completeness": exp.completeness, "through_synthesis": exp.through_synthesis}
            out.setdefault(label, {})[case.case_id] = row
            print(f"{case.case_id} {label:14s} {row['seconds']:6.2f} s  "
                  + " ".join(f"{s}={row[s]:.2f}" for s in stages))
    summary = {label: {"median_s": float(np.median([r["seconds"] for r in rows.values()])),
                       "max_s": float(np.max([r["seconds"] for r in rows.values()])), "n": len(rows)}
               for label, rows in out.items()}
    for label, s in summary.items():
        print(f"{label:14s} median {s['median_s']:.2f} s, max {s['max_s']:.2f} s over {s['n']} demo cases")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "cases": out,
                                               "threads": 1}, indent=1))


if __name__ == "__main__":
    main()
