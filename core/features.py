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
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from tqdm import tqdm

from core.data.dataset import CaseInputs, Dataset
from core.data.quarantine import Quarantine
from core.data.readers import LabPanel, Scan
from core.data.spec import DatasetSpec
from core.device import backbone_autocast
from core.model.backbones import CHUNK_DIM, ImageBackbone, embed_texts, image_map_shape
from core.model.config import ModelConfig
from core.errors import InputError
from core.folder_lock import locked
from core.paths import cache_dir

if TYPE_CHECKING:
    from core.distributed import Context

log = logging.getLogger(__name__)
FEATURE_VERSION = "4"  # 3: a folder of memory-mapped .npy files; 4: note chunk rows carry a negation flag
CHUNK = 512  # cases read and encoded at a time
PROGRESS_CHUNK = 32  # ... when someone watches: 512 take ~30 s on a busy 2-core CPU, 32 a few seconds
QUARANTINE = "quarantine.json"  # beside the cached arrays: what could not be read, for every later run


def _scratch(path: Path) -> Path:
    """A fresh folder beside `path`, private to this process (parallel test workers share the cache)."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _publish(tmp: Path, path: Path) -> None:
    """Move a finished folder into place in one step; if another process published it first, keep theirs
    (the same data gives the same features)."""
    try:
        tmp.rename(path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


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
    text: dict[str, list[np.ndarray]] = field(default_factory=dict)  # per case (n_chunks, CHUNK_DIM): vector, flag
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
                x = np.zeros((len(rows), n, CHUNK_DIM), np.float32)
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
        """Write as a folder of .npy files (replaced atomically), which `load` memory-maps; files are named by
        the modality's position, never by its (user-given) name."""
        tmp = _scratch(path)
        np.save(tmp / "present.npy", np.asarray(self.present))
        np.save(tmp / "keys.npy", np.asarray(self.keys))
        for j, (name, kind) in enumerate(self.modalities):
            if kind == "image":
                np.save(tmp / f"{j}-image.npy", self.image[name])
            elif kind == "tabular":
                np.save(tmp / f"{j}-tabular.npy", self.tabular[name])
            else:
                rows = self.text[name]
                np.save(tmp / f"{j}-text.npy", np.concatenate(rows) if rows else np.zeros((0, CHUNK_DIM), np.float32))
                np.save(tmp / f"{j}-offsets.npy", np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64))
        (tmp / "modalities.json").write_text(json.dumps(self.modalities), encoding="utf-8")
        _publish(tmp, path)

    @classmethod
    def stack(cls, parts: list["FeatureTable"]) -> "FeatureTable":
        """The rows of several tables one after another, in memory."""
        t = cls(parts[0].modalities, np.concatenate([p.present for p in parts]), np.concatenate([p.keys for p in parts]))
        for name, kind in t.modalities:
            if kind == "image":
                t.image[name] = np.concatenate([p.image[name] for p in parts])
            elif kind == "tabular":
                t.tabular[name] = np.concatenate([p.tabular[name] for p in parts])
            else:
                t.text[name] = [r for p in parts for r in p.text[name]]
        return t

    @classmethod
    def concatenate(cls, parts: list["FeatureTable"], path: Path) -> "FeatureTable":
        """Write the rows of several tables one after another into the folder `path`, streaming through
        memory-mapped output (a data set larger than memory is never held whole), and load it."""
        tmp = _scratch(path)
        mods = parts[0].modalities

        def stream(file: str, get) -> None:
            first = get(parts[0])
            out = np.lib.format.open_memmap(tmp / file, "w+", first.dtype, (sum(len(get(p)) for p in parts), *first.shape[1:]))
            at = 0
            for p in parts:
                block = get(p)
                out[at:at + len(block)] = block
                at += len(block)
            out.flush()
            del out

        stream("present.npy", lambda t: t.present)
        stream("keys.npy", lambda t: t.keys)
        for j, (name, kind) in enumerate(mods):
            if kind == "image":
                stream(f"{j}-image.npy", lambda t, n=name: t.image[n])
            elif kind == "tabular":
                stream(f"{j}-tabular.npy", lambda t, n=name: t.tabular[n])
            else:
                lengths = [len(r) for p in parts for r in p.text[name]]
                np.save(tmp / f"{j}-offsets.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
                stream(f"{j}-text.npy", lambda t, n=name: np.concatenate(t.text[n]) if t.text[n]
                       else np.zeros((0, CHUNK_DIM), np.float32))
        (tmp / "modalities.json").write_text(json.dumps(mods), encoding="utf-8")
        _publish(tmp, path)
        return cls.load(path)

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
        """A saved table with its large arrays (image features, note chunk vectors) memory-mapped: rows are
        read from disk when a batch asks for them."""
        mods = [tuple(m) for m in json.loads((path / "modalities.json").read_text(encoding="utf-8"))]
        t = cls(mods, np.load(path / "present.npy"), np.load(path / "keys.npy"))
        for j, (name, kind) in enumerate(mods):
            if kind == "image":
                t.image[name] = np.load(path / f"{j}-image.npy", mmap_mode="r")
            elif kind == "tabular":
                t.tabular[name] = np.load(path / f"{j}-tabular.npy")
            else:
                data, offsets = np.load(path / f"{j}-text.npy", mmap_mode="r"), np.load(path / f"{j}-offsets.npy")
                t.text[name] = [data[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
        return t


def image_input(scan: Scan, config: ModelConfig) -> np.ndarray:
    """The (1, S, S) image the image encoder reads."""
    return scan.model_input(config.image_size)[None].astype(np.float32)


def encode_images(images: list[np.ndarray], config: ModelConfig, device: torch.device | str = "cpu",
                  batch_size: int = 64) -> np.ndarray:
    """(1, S, S) images → what the trainable image encoder reads: EfficientNet maps, or pixels for the ViT."""
    if config.image_encoder == "vit":
        return np.stack(images).astype(np.float32)
    backbone = ImageBackbone(device, config.image_features)
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
            emb = iter(embed_texts(texts, config.text_max_tokens, config.text_max_chunks, device=device,
                                   negation=config.note_negation, units=config.note_units)) if texts else iter(())
            table.text[name] = [next(emb) if present[i, j] else np.zeros((0, CHUNK_DIM), np.float32) for i in range(n)]
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
    if config.image_encoder == "vit":
        return (1, config.image_size, config.image_size)
    channels, g = image_map_shape(config.image_features, config.image_size)
    return (channels, g, g)


def modalities_of(spec: DatasetSpec) -> tuple[list[tuple[str, str]], dict[str, list[str]]]:
    mods = [(m.name, m.type) for m in spec.modalities]
    labs = {m.name: [lab.name for lab in spec.lab_features(m.name)] for m in spec.modalities if m.type == "tabular"}
    return mods, labs


def unmeasured_labs(ds: Dataset, table: FeatureTable, split: str = "train") -> list[str]:
    """Each lab of a tabular group that no case of `split` measured, as "label (group)": the model cannot learn
    from such a lab (it reads it as always missing), and statistics over that split have nothing to average."""
    rows = ds.indices(split)
    out = []
    for name, kind in table.modalities:
        if kind != "tabular":
            continue
        values = table.tabular[name][rows]
        measured = ~np.isnan(values).all(0) if len(rows) else np.zeros(values.shape[1], bool)
        out += [f"{lab.label} ({name})" for lab, seen in zip(ds.spec.lab_features(name), measured) if not seen]
    return out


# the settings that change what the frozen backbones produce
ENCODER_SETTINGS = ("image_encoder", "image_features", "image_size", "text_max_tokens", "text_max_chunks", "note_negation",
                    "note_units")


def cache_key(fingerprint: str, config: ModelConfig) -> str:
    """The feature cache's key: the format version, the data's fingerprint and the encoder settings."""
    keys = {k: getattr(config, k) for k in ENCODER_SETTINGS}
    return hashlib.sha256(json.dumps([FEATURE_VERSION, fingerprint, keys], sort_keys=True).encode()).hexdigest()[:20]


def feature_cache(ds: Dataset, config: ModelConfig) -> Path:
    """The folder that holds (or will hold) the features of `ds` under these encoder settings."""
    return cache_dir() / f"features-{cache_key(ds.fingerprint(), config)}"


def dataset_features(ds: Dataset, config: ModelConfig, device: torch.device | str = "cpu",
                     progress: bool = True, use_cache: bool = True, ctx: "Context | None" = None,
                     strict: bool = False, on_progress: Callable[[int, int], None] | None = None) -> FeatureTable:
    """Features of every case of a data set, from the on-disk cache when the same data was seen before (a
    folder of memory-mapped arrays). Cases are read and encoded `CHUNK` at a time, so a data set larger than
    memory streams through. Under torchrun (`ctx`) each process encodes every world-th case and rank 0
    merges the shards. Unreadable inputs are quarantined (core/data/quarantine.py: missing for that case,
    listed in `ds.quarantine`, cases left with nothing dropped from the splits) unless `strict`.
    `on_progress(done, total)` is called after every chunk of cases (smaller chunks then, for frequent
    news; the features are the same up to float rounding), not when they come from the cache."""
    path = feature_cache(ds, config)
    if use_cache and (path / "modalities.json").exists():
        return _cached(ds, path, strict)
    sharded = ctx is not None and ctx.active and use_cache
    if use_cache and not sharded:  # (torchrun's ranks encode their shares at once and meet at barriers)
        # two processes asking for the same features (a test worker and another, the app and a command)
        # would each encode them and write one folder: one encodes, the other waits and reads its cache
        with locked(path):
            if (path / "modalities.json").exists():
                return _cached(ds, path, strict)
            return _encode(ds, config, path, device, progress, None, strict, on_progress)
    return _encode(ds, config, path, device, progress, ctx if sharded else None, strict, on_progress, use_cache)


def _cached(ds: Dataset, path: Path, strict: bool) -> FeatureTable:
    """The features cached in `path`, with the unreadable inputs recorded when they were encoded."""
    return _quarantined(ds, FeatureTable.load(path), Quarantine.load(path / QUARANTINE), strict)


def _encode(ds: Dataset, config: ModelConfig, path: Path, device: torch.device | str, progress: bool,
            ctx: "Context | None", strict: bool, on_progress: Callable[[int, int], None] | None,
            use_cache: bool = True) -> FeatureTable:
    """Encode every case (every world-th under torchrun's `ctx`) and, with `use_cache`, write them to `path`."""
    mods, labs = modalities_of(ds.spec)
    quarantine = Quarantine()
    sharded = ctx is not None
    rows = list(range(ctx.rank, len(ds), ctx.world) if sharded else range(len(ds)))
    log.info("encoding %d cases with the frozen backbones (cached afterwards)", len(rows))
    bar = tqdm(total=len(rows), desc="encoding cases", disable=not progress, unit="case")
    parts, scratch = [], path.with_name(f"{path.name}.parts{os.getpid()}")
    chunk = PROGRESS_CHUNK if on_progress else CHUNK
    if on_progress:
        on_progress(0, len(rows))
    for start in range(0, len(rows), chunk):
        cases = [ds.load(i, None if strict else quarantine) for i in rows[start:start + chunk]]
        part = table_from_inputs(cases, mods, labs, config, device)
        if use_cache and len(rows) > CHUNK:  # spill each chunk to disk, keep only a memory map of it
            part.save(scratch / f"{start:09d}")
            part = FeatureTable.load(scratch / f"{start:09d}")
        parts.append(part)
        bar.update(len(part))
        if on_progress:
            on_progress(min(start + chunk, len(rows)), len(rows))
    bar.close()
    if not use_cache:
        return _quarantined(ds, parts[0] if len(parts) == 1 else FeatureTable.stack(parts), quarantine, strict)
    target = path.with_name(path.name + f".rank{ctx.rank}") if sharded else path
    if sharded:
        shutil.rmtree(target, ignore_errors=True)  # a shard left by an interrupted run
    table = FeatureTable.concatenate(parts, target)
    quarantine.save(target / QUARANTINE)
    shutil.rmtree(scratch, ignore_errors=True)
    if not sharded:
        return _quarantined(ds, table, quarantine, strict)
    ctx.barrier()
    if ctx.main:
        shards = [path.with_name(path.name + f".rank{r}") for r in range(ctx.world)]
        merged = Quarantine.merge([Quarantine.load(s / QUARANTINE) for s in shards])
        FeatureTable.interleave([FeatureTable.load(s) for s in shards]).save(path)
        merged.save(path / QUARANTINE)
        for s in shards:
            shutil.rmtree(s)
    ctx.barrier()
    return _cached(ds, path, strict)


def split_features(ds: Dataset, config: ModelConfig, split: str, device: torch.device | str = "cpu",
                   progress: bool = True) -> tuple[Dataset, FeatureTable]:
    """Features for a command that reads one split: the whole data set's when they are cached (training
    left them), else those of the split's cases alone (the default cohort's test split is 450 of 3,000
    cases). Returns the data set whose rows the table's rows are: index both with `indices(split)`."""
    if (feature_cache(ds, config) / "modalities.json").exists():
        return ds, dataset_features(ds, config, device, progress=progress)
    part = ds.subset(ds.indices(split))
    return part, dataset_features(part, config, device, progress=progress)


def _quarantined(ds: Dataset, table: FeatureTable, quarantine: Quarantine, strict: bool) -> FeatureTable:
    """Record what was unreadable on the data set and take cases left with nothing out of the splits."""
    if strict and quarantine:
        first = quarantine.problems[0]
        raise InputError(f"manifest row {first.row} (case {first.case_id}), {first.modality}", first.reason)
    quarantine.dropped = [int(r) for r in np.flatnonzero(~table.present.any(1))]
    ds.quarantine = quarantine
    if quarantine.dropped:
        ds.drop(quarantine.dropped)
    return table
