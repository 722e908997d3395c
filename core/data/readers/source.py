"""One way to turn 'a path or some bytes' into bytes plus a display name for messages."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Union

from core.errors import InputError

Source = Union[str, Path, bytes, bytearray, memoryview]

# Larger uploads are refused before parsing: they are not scans, notes or lab tables we can use.
MAX_FILE_BYTES = 1024 * 1024 * 1024
# A compressed upload may not inflate beyond what is accepted uncompressed: more is a decompression bomb.
MAX_DECOMPRESSED_BYTES = MAX_FILE_BYTES
_INFLATE_CHUNK = 4 * 1024 * 1024


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


def measure_gzip(data: bytes, label: str, error: type[InputError], head: int = 65536) -> tuple[bytes, int]:
    """(the first `head` decompressed bytes, the decompressed length) of gzip content.

    Inflates in bounded chunks and keeps only the head, so a gzip bomb is refused once it passes
    MAX_DECOMPRESSED_BYTES without ever being held in memory. Concatenated gzip members count as one.
    """
    kept, total, rest = bytearray(), 0, data
    while rest:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        pending = rest
        try:
            while not inflater.eof:
                chunk = inflater.decompress(pending, _INFLATE_CHUNK)
                pending = inflater.unconsumed_tail
                if not chunk and not pending:
                    break  # input exhausted before the end of the stream
                total += len(chunk)
                if len(kept) < head:
                    kept += chunk[: head - len(kept)]
                if total > MAX_DECOMPRESSED_BYTES:
                    raise error(label, f"inflates to more than {MAX_DECOMPRESSED_BYTES / 2**20:.0f} MB when "
                                       "decompressed; refused as a decompression bomb")
        except zlib.error:
            raise error(label, "is corrupt compressed (gzip) data") from None
        if not inflater.eof:
            raise error(label, "is truncated compressed (gzip) data (the stream ends early)")
        rest = inflater.unused_data
        if rest.strip(b"\x00") == b"":
            break  # trailing zero padding after the last member, as gzip(1) also accepts
    return bytes(kept), total
