"""Which data a model saw, by content: what the readers decode, never how a library encoded the files.

A data set's identity is a digest of its spec, of each case's id, label, split and patient, and of each present
input as the model reads it: a scan's decoded pixels, a note's text, a lab panel's values in canonical
units. Re-saving a PNG with other compression, a CSV with other number formatting or a note with CRLF
line ends leaves it unchanged; a changed pixel, word or value does not. (An encoder's bytes are no
identity: zlib builds and settings differ between machines and libraries, issue 23.)

Per modality, every case's digest is kept (8 hex digits each, in manifest order), so that a checkpoint
trained on other data can say which modality and which case differ first.

Reading every input takes a few seconds per thousand cases (mostly the lab tables), so the identity is
kept in the cache folder under a signature of the spec, the manifest and every file's size and
modification time, as git's index does: touching or replacing a file reads the data again.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from core.data.readers import LabPanel, Scan
from core.errors import InputError
from core.paths import cache_dir

if TYPE_CHECKING:
    from core.data.dataset import Dataset

VERSION = 1
CASE_HEX = 8  # hex digits kept per case and modality: enough to locate a change, small in meta.json
ROWS = "cases"  # the pseudo-modality of each case's id, label, split and group (patient)


def content_bytes(value: Scan | str | LabPanel) -> bytes:
    """The bytes that stand for an input's content (shape and little-endian float32 pixels; UTF-8 text;
    sorted lab names with the exact value in the model's unit)."""
    if isinstance(value, Scan):
        px = np.ascontiguousarray(value.pixels, dtype="<f4")
        return struct.pack("<4q", px.ndim, *(list(px.shape) + [0] * (3 - px.ndim))[:3]) + px.tobytes()
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return "\n".join(f"{k}={float(v.value).hex()}" for k, v in sorted(value.values.items())).encode()


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=CASE_HEX // 2).hexdigest()


@dataclass(frozen=True)
class DataIdentity:
    """`spec`: digest of the dataset spec; `cases`: per part (ROWS, then each modality), the per-case
    digests concatenated in manifest order ('-' * CASE_HEX for an absent input)."""

    spec: str
    case_ids: tuple[str, ...]
    cases: dict[str, str]

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256(f"robustmdiff-data/{VERSION}\n{self.spec}\n".encode())
        for part in sorted(self.cases):
            h.update(f"{part}:{self.cases[part]}\n".encode())
        return h.hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """What a checkpoint records (the case ids are not: they may be identifiers of the user's data)."""
        return {"version": VERSION, "fingerprint": self.fingerprint, "spec": self.spec, "n_cases": len(self.case_ids),
                "cases": dict(self.cases)}

    def difference(self, recorded: dict[str, Any] | None) -> str | None:
        """None when `recorded` (a `to_dict()`, e.g. from a checkpoint) is this data; else what differs
        first, naming the modality and the case."""
        if not recorded or recorded.get("version") != VERSION:
            return "the checkpoint records no content identity of its data (saved by an older version)"
        if recorded.get("fingerprint") == self.fingerprint:
            return None
        if recorded.get("spec") != self.spec:
            return "the dataset spec differs (modalities, classes, labs or columns)"
        if recorded.get("n_cases") != len(self.case_ids):
            return f"the data has {len(self.case_ids)} cases, the checkpoint's data had {recorded.get('n_cases')}"
        theirs = recorded.get("cases", {})
        for part in [ROWS] + sorted(p for p in self.cases if p != ROWS):
            ours, other = self.cases[part], theirs.get(part, "")
            if ours == other:
                continue
            first = next((i for i in range(len(self.case_ids))
                          if ours[i * CASE_HEX:(i + 1) * CASE_HEX] != other[i * CASE_HEX:(i + 1) * CASE_HEX]), 0)
            what = "case id, label, split or patient" if part == ROWS else f"modality '{part}'"
            return f"{what} differs first at case {self.case_ids[first]} (manifest row {first + 1})"
        return "the data differs (fingerprints differ)"


def data_identity(ds: "Dataset") -> DataIdentity:
    """The identity of `ds`: from the cache when no file changed since it was computed, else read anew."""
    path = cache_dir() / "identity" / f"{_signature(ds)}.json"
    try:
        kept = json.loads(path.read_text())
        return DataIdentity(kept["spec"], tuple(kept["case_ids"]), kept["cases"])
    except (OSError, ValueError, KeyError):
        pass
    identity = read_identity(ds)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}-{threading.get_ident()}")  # the app's sessions are threads
    tmp.write_text(json.dumps({"spec": identity.spec, "case_ids": identity.case_ids, "cases": identity.cases}))
    os.replace(tmp, path)
    return identity


def _signature(ds: "Dataset") -> str:
    """Spec, manifest and each named file's path, size and modification time (not its content)."""
    h = hashlib.sha256(f"{VERSION}\n{ds.spec.to_dict()!r}\n{ds.root.resolve()}\n".encode())
    h.update(ds.manifest.to_csv(index=False).encode())
    for i in range(len(ds)):
        for m in ds.spec.modalities:
            p = ds.path(i, m.name) if m.column else None
            if p is not None:
                try:
                    st = p.stat()
                    h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
                except OSError:
                    h.update(f"{p}\0missing\n".encode())
    return h.hexdigest()[:24]


def read_identity(ds: "Dataset") -> DataIdentity:
    """Read every case through the data set's readers and digest its content (see the module's docstring).
    An input that cannot be read has a digest of its own, distinct from an absent one."""
    spec = hashlib.sha256(repr(ds.spec.to_dict()).encode()).hexdigest()[:16]
    rows, parts = [], {m.name: [] for m in ds.spec.modalities}
    for i in range(len(ds)):
        rows.append(_digest("\x1f".join((ds.case_id(i), ds.classes[ds.labels[i]], str(ds.given_splits[i]),
                                          str(ds.groups[i]))).encode()))
        for m in ds.spec.modalities:
            if not ds.is_present(i, m.name):
                parts[m.name].append("-" * CASE_HEX)
                continue
            try:
                parts[m.name].append(_digest(content_bytes(ds.read(i, m.name))))
            except InputError:
                parts[m.name].append(_digest(b"unreadable"))
    cases = {ROWS: "".join(rows), **{name: "".join(d) for name, d in parts.items()}}
    return DataIdentity(spec, tuple(ds.case_id(i) for i in range(len(ds))), cases)
