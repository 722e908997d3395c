"""Frozen-backbone features for whole data sets (cached on disk) and for single cases (live).

Both paths run the same functions: `case_inputs_to_arrays` turns a case's inputs into what a frozen
backbone reads, and the backbones are the same modules, so a prediction from cached features equals a
prediction from the files (up to float rounding). The cache key is the data's fingerprint and the
encoder settings, so a changed file or setting never reuses stale features.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from core.data.dataset import CaseInputs, Dataset
from core.data.readers import LabPanel, Scan
from core.data.spec import DatasetSpec
from core.device import backbone_autocast
from core.model.backbones import TEXT_DIM, ImageBackbone, embed_texts
from core.model.config import ModelConfig
from core.paths import cache_dir

if TYPE_CHECKING:
    from core.distributed import Context

log = logging.getLogger(__name__)
FEATURE_VERSION = "2"


def _to(array: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """A host array as a tensor on the device; through pinned memory without blocking on CUDA."""
    t = torch.as_tensor(array)
    return t.pin_memory().to(device, non_blocking=True) if torch.device(device).type == "cuda" else t


def content_key(data: bytes) -> int:
    """A stable 63-bit key of a modality's content (seeds the sampler per case; see `case_seeds`)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


@dataclass
class FeatureTable:
    """Per modality, what its trainable encoder reads, for N cases; `present` (N, M) says who has what and
    `keys` (N, M) is a hash of each present input's content (0 where absent)."""

    modalities: list[tuple[str, str]]
    present: np.ndarray
    keys: np.ndarray
    image: dict[str, np.ndarray] = field(default_factory=dict)  # (N, C, h, w) maps or (N, 1, S, S) pixels
    text: dict[str, list[np.ndarray]] = field(default_factory=dict)  # per case (n_chunks, 384)
    tabular: dict[str, np.ndarray] = field(default_factory=dict)  # (N, L) canonical values, NaN = not measured

    def __len__(self) -> int:
        return len(self.present)

    def batch(self, idx: np.ndarray | list[int], device: torch.device | str = "cpu",
              drop: np.ndarray | None = None) -> dict[str, dict[str, torch.Tensor]]:
        """Tensors for rows `idx`; `drop` (len(idx), M) bool switches present modalities off."""
        idx = np.asarray(idx)
        present = self.present[idx].copy()
        if drop is not None:
            present &= ~drop
        out: dict[str, dict[str, torch.Tensor]] = {}
        for j, (name, kind) in enumerate(self.modalities):
            p = _to(present[:, j], device)
            if kind == "image":
                out[name] = {"x": _to(self.image[name][idx], device), "present": p}
            elif kind == "text":
                rows = [self.text[name][i] for i in idx]
                n = max(1, max(len(r) for r in rows))
                x = np.zeros((len(rows), n, TEXT_DIM), np.float32)
                valid = np.zeros((len(rows), n), bool)
                for r, arr in enumerate(rows):
                    x[r, : len(arr)] = arr
                    valid[r, : len(arr)] = True
                valid &= present[:, j][:, None]
                out[name] = {"x": _to(x, device), "valid": _to(valid, device), "present": p}
            else:
                vals = self.tabular[name][idx].copy()
                vals[~present[:, j]] = np.nan
                out[name] = {"x": _to(vals, device), "present": p}
        return out

    def save(self, path: Path) -> None:
        arrays: dict[str, np.ndarray] = {"present": self.present, "keys": self.keys}
        for k, v in self.image.items():
            arrays[f"image/{k}"] = v
        for k, v in self.tabular.items():
            arrays[f"tabular/{k}"] = v
        for k, rows in self.text.items():
            arrays[f"text/{k}/data"] = np.concatenate(rows) if rows else np.zeros((0, 384), np.float32)
            arrays[f"text/{k}/lengths"] = np.array([len(r) for r in rows])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, modalities=json.dumps(self.modalities), **arrays)
        tmp.replace(path)

    @classmethod
    def interleave(cls, shards: list["FeatureTable"]) -> "FeatureTable":
        """One table from shards where shard r holds rows r, r + w, r + 2w, … (w = number of shards)."""
        w, n = len(shards), sum(len(s) for s in shards)

        def rows(get):
            first = get(shards[0])
            out = np.empty((n, *first.shape[1:]), first.dtype)
            for r, s in enumerate(shards):
                out[r::w] = get(s)
            return out

        t = cls(shards[0].modalities, rows(lambda s: s.present), rows(lambda s: s.keys))
        for name, kind in t.modalities:
            if kind == "image":
                t.image[name] = rows(lambda s: s.image[name])
            elif kind == "tabular":
                t.tabular[name] = rows(lambda s: s.tabular[name])
            else:
                t.text[name] = [shards[i % w].text[name][i // w] for i in range(n)]
        return t

    @classmethod
    def load(cls, path: Path) -> "FeatureTable":
        with np.load(path, allow_pickle=False) as z:
            mods = [tuple(m) for m in json.loads(str(z["modalities"]))]
            t = cls(mods, z["present"], z["keys"])
            for name, kind in mods:
                if kind == "image":
                    t.image[name] = z[f"image/{name}"]
                elif kind == "tabular":
                    t.tabular[name] = z[f"tabular/{name}"]
                else:
                    data, lengths = z[f"text/{name}/data"], z[f"text/{name}/lengths"]
                    t.text[name] = np.split(data, np.cumsum(lengths)[:-1])
        return t


def image_input(scan: Scan, config: ModelConfig) -> np.ndarray:
    """The (1, S, S) image the image encoder reads."""
    return scan.model_input(config.image_size)[None].astype(np.float32)


def encode_images(images: list[np.ndarray], config: ModelConfig, device: torch.device | str = "cpu",
                  batch_size: int = 64) -> np.ndarray:
    """(1, S, S) images → what the trainable image encoder reads: EfficientNet maps, or pixels for the ViT."""
    if config.image_encoder == "vit":
        return np.stack(images).astype(np.float32)
    backbone = ImageBackbone(device)
    out = []
    with torch.inference_mode(), backbone_autocast(device):
        for s in range(0, len(images), batch_size):
            x = torch.as_tensor(np.stack(images[s:s + batch_size]), device=device)
            out.append(backbone(x).float().cpu().numpy())
    return np.concatenate(out)


def table_from_inputs(cases: list[CaseInputs], spec_modalities: list[tuple[str, str]],
                      labs: dict[str, list[str]], config: ModelConfig, device: torch.device | str = "cpu",
                      progress: bool = False) -> FeatureTable:
    """Frozen features for parsed cases: the one function both the cache and live prediction use."""
    n = len(cases)
    present = np.array([[c.inputs.get(name) is not None for name, _ in spec_modalities] for c in cases], bool).reshape(n, -1)
    table = FeatureTable(spec_modalities, present, np.zeros((n, len(spec_modalities)), np.int64))
    for j, (name, kind) in enumerate(spec_modalities):
        if kind == "image":
            imgs = [image_input(c.inputs[name], config) if present[i, j] else None for i, c in enumerate(cases)]
            table.keys[:, j] = [content_key(im.tobytes()) if im is not None else 0 for im in imgs]
            real = [im for im in imgs if im is not None]
            enc = encode_images(real, config, device) if real else None
            shape = enc.shape[1:] if enc is not None else _image_shape(config)
            arr = np.zeros((n, *shape), np.float32)
            if enc is not None:
                arr[present[:, j]] = enc
            table.image[name] = arr
        elif kind == "text":
            texts = [c.inputs[name] for c in cases if c.inputs.get(name) is not None]
            table.keys[:, j] = [content_key(c.inputs[name].encode("utf-8", "surrogatepass")) if present[i, j] else 0
                                for i, c in enumerate(cases)]
            emb = iter(embed_texts(texts, config.text_max_tokens, config.text_max_chunks, device=device)) if texts else iter(())
            table.text[name] = [next(emb) if present[i, j] else np.zeros((0, 384), np.float32) for i in range(n)]
        else:
            names = labs[name]
            rows = []
            for i, c in enumerate(cases):
                panel = c.inputs.get(name)
                rows.append([panel.values[k].value if isinstance(panel, LabPanel) and k in panel.values else np.nan
                             for k in names])
            table.tabular[name] = np.array(rows, np.float32).reshape(n, len(names))
            table.keys[:, j] = [content_key(np.nan_to_num(r, nan=-1e30).tobytes()) if present[i, j] else 0
                                for i, r in enumerate(table.tabular[name])]
    return table


def _image_shape(config: ModelConfig) -> tuple[int, ...]:
    g = config.image_size // 32
    return (1, config.image_size, config.image_size) if config.image_encoder == "vit" else (1280, g, g)


def modalities_of(spec: DatasetSpec) -> tuple[list[tuple[str, str]], dict[str, list[str]]]:
    mods = [(m.name, m.type) for m in spec.modalities]
    labs = {m.name: [lab.name for lab in spec.lab_features(m.name)] for m in spec.modalities if m.type == "tabular"}
    return mods, labs


def dataset_features(ds: Dataset, config: ModelConfig, device: torch.device | str = "cpu",
                     progress: bool = True, use_cache: bool = True, ctx: "Context | None" = None) -> FeatureTable:
    """Features of every case of a data set, from the on-disk cache when the same data was seen before.
    Under torchrun (`ctx`) each process encodes every world-th case and rank 0 merges the shards."""
    keys = {k: getattr(config, k) for k in ("image_encoder", "image_size", "text_max_tokens", "text_max_chunks")}
    fingerprint = ds.fingerprint()
    key = hashlib.sha256(json.dumps([FEATURE_VERSION, fingerprint, keys], sort_keys=True).encode()).hexdigest()[:20]
    path = cache_dir() / f"features-{key}.npz"
    if use_cache and path.exists():
        return FeatureTable.load(path)
    mods, labs = modalities_of(ds.spec)
    sharded = ctx is not None and ctx.active and use_cache
    rows = range(ctx.rank, len(ds), ctx.world) if sharded else range(len(ds))
    cases = [ds.load(i) for i in tqdm(rows, desc="reading cases", disable=not progress, unit="case")]
    log.info("encoding %d cases with the frozen backbones (cached afterwards)", len(cases))
    table = table_from_inputs(cases, mods, labs, config, device, progress)
    if not sharded:
        if use_cache:
            table.save(path)
        return table
    table.save(path.with_suffix(f".rank{ctx.rank}.npz"))
    ctx.barrier()
    if ctx.main:
        shards = [path.with_suffix(f".rank{r}.npz") for r in range(ctx.world)]
        FeatureTable.interleave([FeatureTable.load(s) for s in shards]).save(path)
        for s in shards:
            s.unlink()
    ctx.barrier()
    return FeatureTable.load(path)
