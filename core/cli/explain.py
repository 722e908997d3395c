"""`python -m core explain`: explain one case; writes the heatmap PNG, an HTML report and a JSON of all numbers."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from core.cli import absent_list, add_case_arguments, case_sources, print_guard
from core.jsonout import dumps


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="explain one case: heatmap, highlighted note, lab attributions",
                       description="Predict and explain one case. Writes <out>/heatmap_<modality>.png, "
                                   "<out>/report.html (self-contained) and <out>/explanation.json.")
    add_case_arguments(p)
    p.add_argument("--method", default="integrated_gradients",
                   choices=["integrated_gradients", "gradient_x_input", "shap", "random"], help="attribution method")
    p.add_argument("--image-method", choices=["integrated_gradients", "grad_cam", "gradient_x_input", "kernel_shap"],
                   help="override the image attribution method")
    p.add_argument("--note-words", choices=["top", "all"], default="top",
                   help="Integrated Gradients on a note: the words of the clauses that hold most of its attribution "
                        "(top, default) or every word (all; MiniLM then runs over the whole note at every step)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--include-annotated-pixels", action="store_true",
                   help="a scan whose pixels may carry burned-in patient details (ultrasound, secondary capture, "
                        "BurnedInAnnotation = YES) is left out of the report and heatmap files; include it after "
                        "checking that it carries none")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from core.explain.explanation import explain_case
    from core.explain.render import completeness_text, overlay, png_bytes, report_html
    from core.inference import Predictor

    predictor = Predictor.load(args.checkpoint, args.device)
    case = predictor.case(case_id="case", **case_sources(args))
    absent = absent_list(args.absent)
    exp = explain_case(predictor, case, absent, args.method, args.image_method,
                       allow_domain_mismatch=args.allow_domain_mismatch, note_words=args.note_words)
    print_guard(exp.prediction)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, heat in exp.image.items():
        scan = case.inputs[name]
        if scan.pixel_identifiers and not args.include_annotated_pixels:
            print(f"warning: {name}: {scan.pixel_identifiers}; left out of the report and heatmap files "
                  "(--include-annotated-pixels after checking)", file=sys.stderr)
            continue
        (out / f"heatmap_{name}.png").write_bytes(png_bytes(overlay(scan.display(), heat, fov=exp.image_fov.get(name),
                                                                    cells=exp.image_resolution.get(name))))
    (out / "report.html").write_text(report_html(exp, case.inputs, include_annotated=args.include_annotated_pixels),
                                     encoding="utf-8")
    (out / "explanation.json").write_text(dumps(exp.to_dict()), encoding="utf-8")
    for c in exp.contributions:
        if c["status"] == "present":
            ch = c["change_when_removed"]
            ch = f"{ch:+.3f}" if math.isfinite(ch) else "n/a (the only modality given)"
            print(f"{c['modality']}: gradient share {c['gradient']:.0%}, change in p({exp.target}) when removed {ch}; "
                  f"{completeness_text(exp, c['modality'])}")
        else:
            print(f"{c['modality']}: {c['status']} (no share)")
    print(f"prediction {exp.prediction.prediction}; explanation ({exp.method}, {exp.seconds:.1f} s) written to {out}")
    return 0
