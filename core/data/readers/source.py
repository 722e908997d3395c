"""One way to turn 'a path or some bytes' into bytes plus a display name for messages."""

from __future__ import annotations

from pathlib import Path
from typing import Union

from core.errors import InputError

Source = Union[str, Path, bytes, bytearray, memoryview]

# Larger uploads are refused before parsing: they are not scans, notes or lab tables we can use.
MAX_FILE_BYTES = 1024 * 1024 * 1024


def read_source(source: Source, name: str | None, error: type[InputError]) -> tuple[bytes, str]:
    """Return (content, display name). The display name is the base name only, never a full path."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        label = Path(name).name if name else "uploaded file"
    else:
        path = Path(source)
        label = Path(name).name if name else path.name
        try:
            size = path.stat().st_size
        except OSError:
            raise error(label, "file not found") from None
        if path.is_dir():
            raise error(label, "is a folder, not a file")
        if size > MAX_FILE_BYTES:
            raise error(label, f"is {size / 2**20:.0f} MB; the limit is {MAX_FILE_BYTES / 2**20:.0f} MB")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise error(label, f"cannot be read ({e.strerror})") from None
    if len(data) == 0:
        raise error(label, "is empty (0 bytes)")
    return data, label
