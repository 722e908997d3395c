"""`python -m core import`: turn a copy of a public dataset you already have into a data folder for `train`.

(The module is `importer` because `import` is a Python keyword; the command is `import`.)
"""

from __future__ import annotations

import argparse
import time

from core.data.importers import REPORT_NAME


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="build a data folder from a public dataset you have (MIMIC, Derm7pt)",
                       description="Build a data folder (manifest.csv, spec.yaml, per-case files, import_report.json) "
                                   "from your copy of a public dataset in its published layout. Nothing is "
                                   "downloaded. Then: python -m core validate --data OUT; python -m core train "
                                   "--data OUT.")
    datasets = p.add_subparsers(dest="dataset", required=True, metavar="dataset")
    _add_mimic(datasets)
    _add_derm7pt(datasets)


def _add_mimic(datasets: argparse._SubParsersAction) -> None:
    m = datasets.add_parser("mimic", help="MIMIC-CXR-JPG + MIMIC-IV hosp labs + MIMIC-IV-Note reports",
                            description="One case per chest X-ray study of MIMIC-CXR-JPG: a frontal image, a label "
                                        "from the CheXpert columns, the labs charted in the window before the study "
                                        "(MIMIC-IV hosp) and the radiology report without its impression "
                                        "(MIMIC-IV-Note). See README, 'Importing public datasets'.")
    m.add_argument("--cxr", required=True, help="MIMIC-CXR-JPG root (files/, mimic-cxr-2.0.0-*.csv[.gz])")
    m.add_argument("--hosp", help="MIMIC-IV root or its hosp/ folder (labevents, d_labitems); without it: no labs")
    m.add_argument("--note", help="MIMIC-IV-Note root or its note/ folder (radiology, radiology_detail); "
                                  "without it: reports only from MIMIC-CXR report files under --cxr/--reports")
    m.add_argument("--reports", help="folder with MIMIC-CXR's report files files/pXX/pNNNNNNNN/sNNNNNNNN.txt, "
                                     "linked to their study exactly (default: the --cxr root)")
    m.add_argument("--out", required=True, help="output folder (new, empty, or an earlier import)")
    m.add_argument("--window-hours", type=float, default=24.0,
                   help="labs charted at most this long before the study (default 24)")
    m.add_argument("--note-window-hours", type=float, default=12.0,
                   help="a note matched by time is charted at most this far from the study (default 12)")
    m.add_argument("--note-sections", choices=("context", "findings", "all"), default="context",
                   help="what of each report the note keeps: context (default: examination, indication, history, "
                        "technique, comparison: what is known before the image is read); findings (adds the "
                        "radiologist's reading of the image) or all (adds the impression the labels were read from) "
                        "leak the answer into the note and inflate every result: only to measure that leak")
    m.add_argument("--views", default="PA,AP", help="frontal views to use, preferred first (default PA,AP)")
    m.add_argument("--uncertain", choices=("negative", "positive", "drop"), default="negative",
                   help="how to read an uncertain (-1) CheXpert finding (default negative)")
    m.add_argument("--copy-images", action="store_true",
                   help="copy the chosen images into OUT/images (default: reference them where they are)")
    m.add_argument("--limit", type=int, help="import only the first N studies (by study id): a quick trial")
    m.add_argument("--rare-below", type=float, default=0.05,
                   help="classes under this share of the cases are rare classes (default 0.05)")
    m.set_defaults(run=run_mimic)


def _add_derm7pt(datasets: argparse._SubParsersAction) -> None:
    d = datasets.add_parser("derm7pt", help="Derm7pt: clinical + dermoscopic images and patient metadata",
                            description="One case per lesion of the seven-point checklist dataset: the clinical and "
                                        "the dermoscopic image, patient metadata (sex, elevation, location) and the "
                                        "diagnosis grouped as Kawahara et al. 2019. See README, 'Importing public "
                                        "datasets'.")
    d.add_argument("--root", required=True, help="the Derm7pt release folder (meta/meta.csv, meta/*_indexes.csv, images/)")
    d.add_argument("--out", required=True, help="output folder (new, empty, or an earlier import)")
    d.add_argument("--grouping", choices=("five", "melanoma"), default="five",
                   help="labels: the five published groups (default) or melanoma vs not")
    d.add_argument("--with-criteria", action="store_true",
                   help="add the seven-point criteria as a tabular modality (they nearly define the label)")
    d.add_argument("--copy-images", action="store_true", help="copy the images into OUT/images")
    d.add_argument("--rare-below", type=float, default=0.05,
                   help="classes under this share of the cases are rare classes (default 0.05)")
    d.set_defaults(run=run_derm7pt)


def run_mimic(args: argparse.Namespace) -> int:
    from core.data.importers.mimic import import_mimic

    t = time.perf_counter()
    report = import_mimic(args.cxr, args.out, args.hosp, args.note, window_hours=args.window_hours,
                          note_window_hours=args.note_window_hours, note_sections=args.note_sections,
                          views=tuple(args.views.split(",")), uncertain=args.uncertain, copy_images=args.copy_images,
                          reports=args.reports, limit=args.limit, rare_below=args.rare_below)
    _summary(args.out, report, time.perf_counter() - t)
    return 0


def run_derm7pt(args: argparse.Namespace) -> int:
    from core.data.importers.derm7pt import import_derm7pt

    t = time.perf_counter()
    report = import_derm7pt(args.root, args.out, grouping=args.grouping, with_criteria=args.with_criteria,
                            copy_images=args.copy_images, rare_below=args.rare_below)
    _summary(args.out, report, time.perf_counter() - t)
    return 0


def _summary(out: str, report: dict, seconds: float) -> None:
    print(f"wrote {report['cases']} cases to {out} in {seconds:.1f} s")
    for split, counts in report["labels"].items():
        print(f"  {split}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if "present" in report:
        print("  present: " + ", ".join(f"{k} {v}" for k, v in report["present"].items()))
    print(f"what was read, kept and dropped: {out}/{REPORT_NAME}; next: python -m core validate --data {out}")
