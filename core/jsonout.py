"""Strict JSON for everything the project writes: NaN and infinities become null (Python's json module
would write bare NaN, which strict parsers reject), numpy scalars become numbers."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


def clean(x: Any) -> Any:
    """`x` with NaN/inf as None and numpy values as Python ones (what `dumps` writes)."""
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return clean(x.tolist())
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def dumps(obj: Any, indent: int | None = 1) -> str:
    return json.dumps(clean(obj), indent=indent, allow_nan=False)
