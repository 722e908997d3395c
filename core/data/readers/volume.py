"""NIfTI, MHA and NRRD volumes through SimpleITK.

SimpleITK picks its reader from the file name, so the bytes go to a temporary file whose suffix matches
the format detected from the content. Header text (descriptions, which may name a patient) is never read.
Sizes are checked from the header, and gzip content is measured in bounded chunks, before any voxel is
decoded: a small upload cannot claim gigabytes of memory.
"""

from __future__ import annotations

import math
import os
import re
import struct
import tempfile

import numpy as np

from core.data.readers.scan import Scan, check_dimensions, finalise, to_gray
from core.data.readers.source import measure_gzip
from core.errors import ScanError

SUFFIX = {"nifti": ".nii", "nrrd": ".nrrd", "mha": ".mha"}


def _header_size(data: bytes, fmt: str) -> int | None:
    """Bytes before the voxel data of an uncompressed file, or None when compressed or unknown."""
    if fmt == "nifti":
        endian = "<" if struct.unpack("<i", data[:4])[0] in (348, 540) else ">"
        if struct.unpack(endian + "i", data[:4])[0] == 540:
            return int(struct.unpack(endian + "q", data[168:176])[0])
        offset = struct.unpack(endian + "f", data[108:112])[0]
        return int(offset) if math.isfinite(offset) else None
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


def _check_complete(head: bytes, size: int, fmt: str, image, label: str) -> None:  # image: a SimpleITK Image
    """SimpleITK pads truncated files with zeros; refuse them instead. `head`: the (decompressed) start of
    the file, `size`: its full (decompressed) length."""
    header = _header_size(head, fmt)
    if header is None:
        return
    need = header + image.GetNumberOfPixels() * image.GetNumberOfComponentsPerPixel() * image.GetSizeOfPixelComponent()
    if size < need:
        raise ScanError(label, f"is a truncated {fmt.upper()} file ({size} of {need} bytes)")


def _sitk_error(e: RuntimeError, fmt: str, label: str, path: str) -> ScanError:
    first = str(e).replace(path, label).strip().splitlines()[-1][:160] if str(e).strip() else "unreadable"
    if "ElementDataFile" in str(e) or ".raw" in str(e):
        first = "a detached MetaImage header needs its data file; upload a single .mha file"
    return ScanError(label, f"is a {fmt.upper()} file SimpleITK cannot read ({first})")


def read_volume(data: bytes, label: str, fmt: str) -> Scan:
    import SimpleITK as sitk  # here, not at import: it is large, and only volumes need it

    gzipped = data.startswith(b"\x1f\x8b")
    suffix = SUFFIX[fmt] + (".gz" if fmt == "nifti" and gzipped else "")
    fd, path = tempfile.mkstemp(suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        try:
            reader.ReadImageInformation()  # the header only
        except RuntimeError as e:
            if gzipped:
                measure_gzip(data, label, ScanError)  # a broken gzip stream is the real cause; name it
            raise _sitk_error(e, fmt, label, path) from None
        check_dimensions(label, reader.GetSize(), reader.GetNumberOfComponents())
        # A gzip bomb is refused here, before SimpleITK inflates anything.
        head, size = measure_gzip(data, label, ScanError) if gzipped else (data, len(data))
        try:
            image = reader.Execute()
        except RuntimeError as e:
            raise _sitk_error(e, fmt, label, path) from None
    finally:
        os.unlink(path)

    _check_complete(head, size, fmt, image, label)
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
