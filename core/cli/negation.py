"""`python -m core negation`: how the note negation detector reads annotated clinical sentences written by others."""

from __future__ import annotations

import argparse

from core.cli import write_outputs


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("negation", help="measure the note negation detector on an annotated public set",
                       description="Precision, recall and F1 of the negation detector (core/model/negation.py) on a "
                                   "NegEx-style annotation file: each row a sentence with one condition annotated "
                                   "Negated or Affirmed, e.g. rsAnnotations-1-120-random.txt of the public repository "
                                   "chapmanbe/negex (2,376 sentences; not shipped), or on the English clinical "
                                   "cases of the E3C corpus (--e3c). Lists the sentences read wrongly. "
                                   "A maintained library on the same file: tools/negation_libraries.py.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--negex", metavar="FILE", help="NegEx-style annotation file (tab-separated)")
    source.add_argument("--e3c", metavar="FOLDER", help="E3C corpus, English layer 1: the folder of WebAnno XMI files "
                                                        "(hltfbk/E3C-Corpus, data_annotation/English/layer1)")
    p.add_argument("--out", help="write negation.json and negation.md here")
    p.add_argument("--export", metavar="FILE", help="also write the rows read as a NegEx-style file (e.g. E3C's, for "
                                                    "tools/negation_libraries.py)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from core.evaluation.negation import markdown, read_e3c, read_negex, score, write_negex
    from core.jsonout import dumps

    rows = read_negex(args.negex) if args.negex else read_e3c(args.e3c)
    if args.export:
        write_negex(rows, args.export)
    result = score(rows)
    write_outputs(args.out, "negation", result, markdown(result))
    print(dumps(result) if args.json else markdown(result))
    return 0
