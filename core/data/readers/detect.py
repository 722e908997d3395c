"""Recognise a scan's format from its first bytes (never from the file name)."""

from __future__ import annotations

import gzip
import io
import struct
import zlib

FORMATS = ("dicom", "png", "jpeg", "tiff", "bmp", "nifti", "nrrd", "mha")


def _looks_like_nifti(head: bytes) -> bool:
    if len(head) < 348:
        return False
    for endian in "<>":
        size = struct.unpack(endian + "i", head[:4])[0]
        if size == 348 and head[344:347] in (b"n+1", b"ni1"):
            return True
        if size == 540 and head[4:7] in (b"n+2", b"ni2"):
            return True
    return False


def _looks_like_raw_dicom(data: bytes) -> bool:
    """DICOM without the 128-byte preamble: it starts with a group 0x0002 or 0x0008 tag."""
    return len(data) > 8 and data[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")


def detect_format(data: bytes) -> str | None:
    """One of FORMATS, or None when the content is none of them."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data.startswith(b"BM") and len(data) > 26:
        return "bmp"
    if data.startswith(b"NRRD000"):
        return "nrrd"
    if data.startswith(b"\x1f\x8b"):
        try:
            head = gzip.GzipFile(fileobj=io.BytesIO(data)).read(600)
        except (OSError, EOFError, zlib.error):  # a corrupt stream is no format we read
            return None
        return "nifti" if _looks_like_nifti(head) else None
    if _looks_like_nifti(data[:600]):
        return "nifti"
    head = data[:2048]
    if b"NDims" in head and b"ElementType" in head and (b"ObjectType" in head or b"ElementDataFile" in head):
        return "mha"
    if _looks_like_raw_dicom(data):
        return "dicom"
    return None
