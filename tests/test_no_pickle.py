"""Issue 27: nothing executable is read from data folders. Prepared review explanations are stored as JSON
plus arrays (core/review/serialize.py), read with allow_pickle=False, rebuilding only the project's own
dataclasses; a foreign or tampered file is recomputed, never trusted; and no code in core/ or pages/ unpickles.
(A real explanation's exact round trip is checked in tests/test_serve.py, beside the one it computes.)"""

from __future__ import annotations

import io
import json
import math
import re

import numpy as np
import pytest

from core.explain.labs import LabAttribution
from core.explain.text import WordAttribution
from core.prediction import Prediction
from core.paths import ROOT
from core.review import serialize
from core.review.prepared import PreparedExplanations


def stored(value):
    buffer = io.BytesIO()
    serialize.write(value, buffer)
    buffer.seek(0)
    return serialize.read(buffer)


def prediction(**changes) -> Prediction:
    return Prediction(**{"prediction": "pneumonia", "probabilities": {"pneumonia": 0.75, "tuberculosis": 0.25},
                         "present": ["image"], "synthesized": {"labs": {"confidence": 0.5}}, "device": "cpu",
                         "latency_ms": 12.5, "domain": ["image: a contradiction"]} | changes)


def test_values_come_back_exactly_with_their_types():
    value = {"words": [WordAttribution("fever", 0, 5, -0.125)],
             "labs": (LabAttribution("crp", "CRP", None, "mg/L", "0-5", "H", 0.5, 0.25, math.nan),),
             "heat": np.arange(6, dtype=np.float32).reshape(2, 3), "scalar": np.float32(0.1), "count": np.int64(3),
             (1, "tuple key"): True, 2: None, "prediction": prediction()}
    back = stored(value)
    assert set(back) == set(value) and isinstance(back["labs"], tuple)
    assert back["words"] == value["words"] and back["prediction"] == value["prediction"]
    assert back["labs"][0].value is None and math.isnan(back["labs"][0].shap)
    assert back["heat"].dtype == np.float32 and np.array_equal(back["heat"], value["heat"])
    assert type(back["scalar"]) is np.float32 and back["scalar"] == value["scalar"] and type(back["count"]) is np.int64


def test_a_field_the_class_gained_since_takes_its_default():
    """The agent extending Explanation/Prediction may add fields: files written before still read."""
    tree, arrays = serialize.encode(prediction())
    del tree["fields"]["domain"]
    assert serialize.decode(tree, arrays).domain == []


def _npz(**entries) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **entries)
    return buffer.getvalue()


def _structure(value) -> np.ndarray:
    return np.frombuffer(json.dumps({"format": serialize.FORMAT, "value": value}).encode(), dtype=np.uint8)


@pytest.mark.parametrize("content, refusal", [
    (_npz(__structure__=_structure({"t": "dataclass", "type": "os:system", "fields": {}})), "not one of this project"),
    (_npz(__structure__=_structure({"t": "dataclass", "type": "core.paths:Path", "fields": {}})), "not a dataclass"),
    (_npz(__structure__=_structure({"t": "array", "ref": "a0"}), a0=np.array([print], dtype=object)), "allow_pickle"),
    (b"\x80\x04\x95 a pickle, not an npz", None)])
def test_a_foreign_file_is_refused_and_the_item_recomputed(tmp_path, content, refusal):
    with pytest.raises((ValueError, OSError), match=refusal):
        serialize.read(io.BytesIO(content))
    computed = []
    prep = PreparedExplanations({"m": tmp_path}, lambda row, model, method: computed.append(row) or {"row": row})
    key = (3, "case-3", "m", "shap")
    prep._path(key).write_bytes(content)  # planted where the item would be kept
    assert prep.get(key) == {"row": 3} and computed == [3]
    assert stored(prep.get(key)) == {"row": 3} and serialize.read(prep._path(key)) == {"row": 3}  # rewritten safely


UNPICKLING = re.compile(r"^\s*(import|from)\s+(c?pickle|cloudpickle|dill|joblib|shelve|marshal)\b"
                        r"|\b(pickle|cloudpickle|dill|joblib|marshal)\.loads?\(|read_pickle\(|shelve\.open\(", re.M)


def test_nothing_in_core_or_pages_unpickles():
    """`grep -rn pickle core pages` finds nothing; arrays load with allow_pickle off and tensors as weights only."""
    for path in [*(ROOT / "core").rglob("*.py"), *(ROOT / "pages").rglob("*.py"), ROOT / "app.py"]:
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(ROOT)
        assert not UNPICKLING.search(text), (name, UNPICKLING.search(text))
        assert "allow_pickle=True" not in text, name
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (name, call)
