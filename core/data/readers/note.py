"""Clinical notes: plain text of any length and encoding, decoded safely."""

from __future__ import annotations

import codecs
import re
import unicodedata

from charset_normalizer import from_bytes

from core.data.readers.source import Source, read_source
from core.errors import NoteError

_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def decode_text(data: bytes, label: str) -> str:
    """Bytes → str: BOM, then UTF-8, then charset detection; binary content is refused."""
    for bom, enc in _BOMS:
        if data.startswith(bom):
            return data.decode(enc, errors="replace")
    if data.count(b"\x00") > len(data) // 100:
        raise NoteError(label, "looks like binary data, not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    best = from_bytes(data).best()
    if best is None:
        raise NoteError(label, "looks like binary data, not text (no text encoding fits)")
    return str(best)


def clean_note(text: str, label: str = "note") -> str:
    """Normalise a note (NFC, newlines, no control characters); refuse empty or binary-looking text."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    if text and len(_CONTROL.findall(text)) > max(2, len(text) // 50):
        raise NoteError(label, "looks like binary data, not text (too many control characters)")
    replaced = text.count("\ufffd")
    if replaced > max(3, len(text) // 20):
        raise NoteError(label, "looks like binary data, not text (most bytes are not characters)")
    text = _CONTROL.sub(" ", text).strip()
    if not text:
        raise NoteError(label, "is empty (no text to read)")
    if not re.search(r"[^\W\d_]{2,}", text):
        raise NoteError(label, "contains no words")
    return text


def read_note(source: Source, name: str | None = None) -> str:
    """Read a note file (path or bytes). Pasted text goes through `clean_note` directly."""
    data, label = read_source(source, name, NoteError)
    return clean_note(decode_text(data, label), label)
