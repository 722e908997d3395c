"""Prepared explanations on disk without pickle: nothing read back from a data folder can run code.

A value (an `Explanation`, or anything built like one: dataclasses, dicts, lists, tuples, numpy arrays
and scalars, str / int / float / bool / None) is written as one `.npz` file: its structure as JSON in the
entry `__structure__`, every array as an array of its own. Reading uses `np.load(allow_pickle=False)`
and `json`, and rebuilds only dataclasses defined in this project's own modules (`core.…`), field by
field; a field the class gained since the file was written takes its default, so the format follows
`Explanation` and `Prediction` as they grow. Anything else in a file is refused (ValueError), so a
tampered or stale file costs a recomputation, never code execution.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path
from typing import IO, Any

import numpy as np

FORMAT = "robustmdiff-value/1"
STRUCTURE = "__structure__"
TRUSTED_MODULES = ("core.",)  # where a stored dataclass may come from


def encode(value: Any) -> tuple[Any, dict[str, np.ndarray]]:
    """JSON-ready structure of `value` and its arrays by name. Dicts, tuples, arrays and dataclasses are tagged
    objects ({"t": …}); lists and plain scalars are themselves, so the JSON stays readable."""
    arrays: dict[str, np.ndarray] = {}

    def walk(v: Any) -> Any:
        if v is None or isinstance(v, (bool, str)):
            return v
        if type(v) in (int, float):  # not numpy's float64, a float subclass: that keeps its dtype below
            return v
        if isinstance(v, (np.ndarray, np.generic)):
            a = np.asarray(v)
            if a.dtype.hasobject:
                raise TypeError("cannot store an array of Python objects")
            ref = f"a{len(arrays)}"
            arrays[ref] = a
            return {"t": "array", "ref": ref, "scalar": isinstance(v, np.generic)}
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            cls = type(v)
            return {"t": "dataclass", "type": f"{cls.__module__}:{cls.__qualname__}",
                    "fields": {f.name: walk(getattr(v, f.name)) for f in dataclasses.fields(v)}}
        if isinstance(v, dict):
            return {"t": "dict", "items": [[walk(k), walk(x)] for k, x in v.items()]}
        if isinstance(v, tuple):
            return {"t": "tuple", "items": [walk(x) for x in v]}
        if isinstance(v, list):
            return [walk(x) for x in v]
        raise TypeError(f"cannot store a value of type {type(v).__name__}")

    return walk(value), arrays


def _dataclass(name: str) -> type:
    module, _, qualname = name.partition(":")
    if not module.startswith(TRUSTED_MODULES):
        raise ValueError(f"refusing to rebuild {name!r}: not one of this project's classes")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and dataclasses.is_dataclass(obj)):
        raise ValueError(f"{name!r} is not a dataclass")
    return obj


def decode(tree: Any, arrays: Any) -> Any:
    """The value `encode` described (`arrays`: a mapping from names to arrays, e.g. an open NpzFile)."""

    def walk(t: Any) -> Any:
        if t is None or isinstance(t, (bool, int, float, str)):
            return t
        if isinstance(t, list):
            return [walk(x) for x in t]
        if not isinstance(t, dict):
            raise ValueError(f"unexpected {type(t).__name__} in the structure")
        tag = t.get("t")
        if tag == "array":
            a = np.array(arrays[t["ref"]])  # a copy: the file closes after reading
            return a[()] if t.get("scalar") else a
        if tag == "dict":
            return {walk(k): walk(x) for k, x in t["items"]}
        if tag == "tuple":
            return tuple(walk(x) for x in t["items"])
        if tag == "dataclass":
            cls = _dataclass(t["type"])
            stored = t["fields"]
            known = {f.name: f for f in dataclasses.fields(cls)}
            if set(stored) - set(known):
                raise ValueError(f"{t['type']} no longer has fields {sorted(set(stored) - set(known))}")
            obj = cls.__new__(cls)  # the stored state as it was: no __init__ / __post_init__ rerun
            for name, f in known.items():
                if name in stored:
                    value = walk(stored[name])
                elif f.default is not dataclasses.MISSING:
                    value = f.default
                elif f.default_factory is not dataclasses.MISSING:
                    value = f.default_factory()
                else:
                    raise ValueError(f"{t['type']}: field {name!r} is missing and has no default")
                object.__setattr__(obj, name, value)  # frozen dataclasses too
            return obj
        raise ValueError(f"unknown tag {tag!r} in the structure")

    return walk(tree)


def write(value: Any, f: IO[bytes]) -> None:
    """`value` into an open binary file (np.savez on a path would add ".npz" to its name)."""
    tree, arrays = encode(value)
    text = json.dumps({"format": FORMAT, "value": tree}).encode("utf-8")
    np.savez(f, **{STRUCTURE: np.frombuffer(text, dtype=np.uint8)}, **arrays)


def read(source: str | Path | IO[bytes]) -> Any:
    """The value in a file written by `write`; ValueError (or OSError) for anything else."""
    with np.load(source, allow_pickle=False) as z:
        if STRUCTURE not in z.files:
            raise ValueError("not a stored value (no structure entry)")
        doc = json.loads(z[STRUCTURE].tobytes().decode("utf-8"))
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"unknown format {doc.get('format') if isinstance(doc, dict) else None!r}")
        return decode(doc["value"], z)
