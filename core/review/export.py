"""The ratings as CSV, safe to open in a spreadsheet.

Reviewer names and comments are free text. A cell that starts with =, +, -, @, a tab or a carriage
return is read by Excel/LibreOffice as a formula (CSV injection), so such cells get a leading single
quote, as OWASP recommends; the csv module quotes commas, quotes and newlines.
"""

from __future__ import annotations

import csv
import io

from core.review.store import SCALES, iso

COLUMNS = ("reviewer", "case_id", "method", *SCALES, "comment", "saved_at")
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
