"""The ratings, and the study's results, as CSV safe to open in a spreadsheet.

Reviewer names and comments are free text. A cell that starts with =, +, -, @, a tab or a carriage
return is read by Excel/LibreOffice as a formula (CSV injection), so such cells get a leading single
quote, as OWASP recommends; the csv module quotes commas, quotes and newlines.
"""

from __future__ import annotations

import csv
import io

import pandas as pd

from core.review.store import SCALES, iso

COLUMNS = ("reviewer", "case_id", "model", "method", *SCALES, "comment", "saved_at", "study")  # study: which
# model and data the rating is of (core/review/models.py: with_study); blank where the caller gives none
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: object) -> object:
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def ratings_csv(ratings: list[dict]) -> str:
    """One row per rating, timestamps as ISO-8601 UTC, every text cell formula-safe."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in ratings:
        row = {**r, "saved_at": iso(r.get("saved_at"))}
        writer.writerow([safe_cell(row.get(c, "")) for c in COLUMNS])
    return out.getvalue()


def results_csv(tables: dict[str, pd.DataFrame]) -> str:
    """Several result tables in one CSV: a first column `table` names each row's table (e.g. per_model,
    paired_test); the other columns are the union of the tables' columns, blank where a table has none."""
    parts = [t.astype(object).assign(table=name)[["table", *t.columns]] for name, t in tables.items() if len(t)]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if not parts:
        writer.writerow(["table"])
        return out.getvalue()
    whole = pd.concat(parts, ignore_index=True)
    writer.writerow(whole.columns)
    for row in whole.itertuples(index=False):
        writer.writerow(["" if (isinstance(v, float) and v != v) or v is None else safe_cell(v) for v in row])
    return out.getvalue()
