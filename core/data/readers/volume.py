"""NIfTI, MHA and NRRD volumes through SimpleITK.

SimpleITK picks its reader from the file name, so the bytes go to a temporary file whose suffix matches
the format detected from the content. Header text (descriptions, which may name a patient) is never read.
"""

from __future__ import annotations

import gzip
import os
import re
import struct
import zlib
import tempfile

import numpy as np

from core.data.readers.scan import Scan, finalise, to_gray
from core.errors import ScanError

SUFFIX = {"nifti": ".nii", "nrrd": ".nrrd", "mha": ".mha"}


def _header_size(data: bytes, fmt: str) -> int | None:
    """Bytes before the voxel data of an uncompressed file, or None when compressed or unknown."""
    if fmt == "nifti":
        endian = "<" if struct.unpack("<i", data[:4])[0] in (348, 540) else ">"
        if struct.unpack(endian + "i", data[:4])[0] == 540:
            return int(struct.unpack(endian + "q", data[168:176])[0])
        return int(struct.unpack(endian + "f", data[108:112])[0])
    if fmt == "mha":
        head = data[:65536]
        m = re.search(rb"ElementDataFile\s*=\s*LOCAL\r?\n", head)
        if m is None or re.search(rb"CompressedData\s*=\s*True", head, re.I):
            return None
        return m.end()
    if fmt == "nrrd":
        end = data.find(b"\n\n")
        head = data[:end]
        if end < 0 or not re.search(rb"encoding:\s*raw", head) or b"data file" in head:
            return None
        return end + 2
    return None


def _check_complete(data: bytes, fmt: str, image, label: str) -> None:  # image: a SimpleITK Image
    """SimpleITK pads truncated files with zeros; refuse them instead."""
    if data.startswith(b"\x1f\x8b"):
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error):
            raise ScanError(label, f"is a truncated or corrupt compressed {fmt.upper()} file") from None
    header = _header_size(data, fmt)
    if header is None:
        return
    need = header + image.GetNumberOfPixels() * image.GetNumberOfComponentsPerPixel() * image.GetSizeOfPixelComponent()
    if len(data) < need:
        raise ScanError(label, f"is a truncated {fmt.upper()} file ({len(data)} of {need} bytes)")


def read_volume(data: bytes, label: str, fmt: str) -> Scan:
    import SimpleITK as sitk  # here, not at import: it is large, and only volumes need it

    suffix = SUFFIX[fmt] + (".gz" if fmt == "nifti" and data.startswith(b"\x1f\x8b") else "")
    fd, path = tempfile.mkstemp(suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            image = sitk.ReadImage(path)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[-1][:160] if str(e).strip() else "unreadable"
            if "ElementDataFile" in str(e) or ".raw" in str(e):
                first = "a detached MetaImage header needs its data file; upload a single .mha file"
            raise ScanError(label, f"is a {fmt.upper()} file SimpleITK cannot read ({first})") from None
    finally:
        os.unlink(path)

    _check_complete(data, fmt, image, label)
    arr = sitk.GetArrayFromImage(image).astype(np.float32)  # (z, y, x[, components])
    if image.GetNumberOfComponentsPerPixel() > 1:
        arr = to_gray(arr) if arr.shape[-1] in (3, 4) else arr.mean(axis=-1)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise ScanError(label, f"is a 4D series {tuple(arr.shape)}; upload one 3D volume")
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ScanError(label, f"has {arr.ndim} dimensions; expected a 2D image or a 3D volume")
    spacing = tuple(float(s) for s in reversed(image.GetSpacing()))
    info = {"Dimensions": "×".join(str(s) for s in image.GetSize()), "PixelType": image.GetPixelIDTypeAsString()}
    # A volume's intensities are usually CT (HU) when its range goes well below zero.
    modality = "CT" if arr.min() < -500 else "MR" if fmt == "nifti" else "OT"
    notes: list[str] = []
    return Scan(pixels=finalise(arr, label, notes), notes=notes, source_format=fmt, modality=modality, spacing=spacing, info=info)
