"""A scan as the rest of the code sees it, whatever file it came from, and how to turn it into pixels.

`read_scan` detects the format from the content and dispatches to the DICOM, volume or raster reader.
Every reader returns a `Scan`: real-valued pixels (Hounsfield units for CT after the modality LUT),
the display defaults the file carries, and a short whitelist of non-identifying facts. Nothing that
could identify a patient is kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from core.data.readers.detect import detect_format
from core.data.readers.source import Source, read_source
from core.errors import ScanError

# Frames larger than this are downscaled on load (the model sees 128-224 px; the viewer 1024 px).
MAX_SIDE = 2048
# Larger images are refused: a decompression bomb or not a medical image.
MAX_PIXELS = 400_000_000
# Scans whose header describes more values (pixels × frames or slices × samples) are refused before
# anything is decoded: 512³, a large CT volume, already decodes to 512 MB of float32.
MAX_VOXELS = 2**27
# Window presets (centre, width) offered by the viewer for CT.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "abdomen": (40.0, 400.0),
}


@dataclass
class Scan:
    """Pixels as (frames or slices, height, width) float32, with how to display them."""

    pixels: np.ndarray
    source_format: str
    modality: str = "OT"
    window: tuple[float, float] | None = None  # default (centre, width) from the file
    invert: bool = False  # MONOCHROME1: high values are dark
    spacing: tuple[float, ...] | None = None
    info: dict[str, str] = field(default_factory=dict)  # whitelisted, non-identifying
    notes: list[str] = field(default_factory=list)  # what was done to make it readable (shown to the user)
    # Why the pixels may show patient identifiers (burned-in text, a screenshot), else None.
    pixel_identifiers: str | None = None

    @property
    def n_slices(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def is_volume(self) -> bool:
        return self.n_slices > 1

    def default_window(self) -> tuple[float, float]:
        """The file's window, else one spanning the 0.5-99.5 percentiles (robust to outliers)."""
        if self.window is not None and self.window[1] > 0:
            return self.window
        lo, hi = np.percentile(self.pixels, [0.5, 99.5])
        if hi <= lo:
            lo, hi = float(self.pixels.min()), float(self.pixels.max())
        return (float(lo + hi) / 2, float(max(hi - lo, 1e-6)))

    def plane(self, slice_index: int | None = None, projection: str | None = None) -> np.ndarray:
        """One 2D plane: a slice (default: the middle one) or a projection ('max', 'mean') of a volume."""
        if projection == "max":
            return self.pixels.max(axis=0)
        if projection == "mean":
            return self.pixels.mean(axis=0)
        if projection is not None:
            raise ValueError(f"unknown projection {projection!r}; use 'max' or 'mean'")
        idx = self.n_slices // 2 if slice_index is None else slice_index
        if not 0 <= idx < self.n_slices:
            raise ScanError("scan", f"slice {idx} does not exist (0-{self.n_slices - 1})")
        return self.pixels[idx]

    def view(self, slice_index: int | None = None, projection: str | None = None) -> "Scan":
        """A 2D scan of one plane (a slice or a projection of a volume): which plane the model reads is the
        user's choice; how it is windowed for the model is not (see `model_input`)."""
        plane = self.plane(slice_index, projection)[None].copy()
        return replace(self, pixels=plane, info=dict(self.info), notes=list(self.notes))

    def display(self, window: tuple[float, float] | None = None, slice_index: int | None = None,
                projection: str | None = None) -> np.ndarray:
        """A 2D plane windowed to [0, 1], bright = dense, as a radiologist reads it."""
        return apply_window(self.plane(slice_index, projection), window or self.default_window(), self.invert)

    def model_input(self, size: int, slice_index: int | None = None, projection: str | None = None) -> np.ndarray:
        """The (size, size) float32 image in [0, 1] that the model reads: always the file's own window (else
        the 0.5-99.5 percentile window), whatever window the viewer shows, so that a display setting can
        never change a diagnosis."""
        return resize_square(self.display(None, slice_index, projection), size)


def apply_window(plane: np.ndarray, window: tuple[float, float], invert: bool = False) -> np.ndarray:
    centre, width = window
    width = max(float(width), 1e-6)
    out = np.clip((plane.astype(np.float32) - (centre - width / 2)) / width, 0.0, 1.0)
    return 1.0 - out if invert else out


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """Resize to size×size keeping the aspect ratio (pad with the border's mean), float32 in [0, 1]."""
    h, w = img.shape
    if (h, w) == (size, size):
        return img.astype(np.float32)
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    pil = Image.fromarray(img.astype(np.float32), mode="F").resize((nw, nh), Image.Resampling.BILINEAR)
    border = float(np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]]).mean())
    out = np.full((size, size), border, dtype=np.float32)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = np.asarray(pil, dtype=np.float32)
    return out


def to_gray(arr: np.ndarray) -> np.ndarray:
    """RGB(A) → luminance (ITU-R BT.601), anything else unchanged."""
    if arr.ndim >= 3 and arr.shape[-1] in (3, 4):
        rgb = arr[..., :3].astype(np.float32)
        return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return arr


def check_dimensions(label: str, dims: Sequence[int], components: int = 1) -> None:
    """Refuse, from the header alone, a scan that would decode to more than MAX_VOXELS values.

    `dims` as the file states them (width, height[, frames or slices, …]); nothing is allocated here.
    """
    dims = [int(d) for d in dims]
    if any(d <= 0 for d in dims) or components <= 0:
        raise ScanError(label, f"has a header describing an empty image ({'×'.join(map(str, dims))})")
    total = math.prod(dims) * components
    if total > MAX_VOXELS:
        what = "×".join(map(str, dims)) + (f" with {components} values per pixel" if components > 1 else "")
        raise ScanError(label, f"has a header describing a {what} image ({total:,} values); scans over "
                               f"{MAX_VOXELS:,} values (a 512×512×512 volume) are refused before decoding")


def limit_size(frames: np.ndarray, label: str, notes: list[str] | None = None) -> np.ndarray:
    """Refuse absurd sizes, downscale large frames so that the longest side is at most MAX_SIDE."""
    n, h, w = frames.shape
    if h == 0 or w == 0:
        raise ScanError(label, "contains an empty image (0 pixels)")
    if h * w > MAX_PIXELS:
        raise ScanError(label, f"is {w}×{h} pixels; images over {MAX_PIXELS // 1_000_000} megapixels are refused")
    if max(h, w) <= MAX_SIDE:
        return frames
    scale = MAX_SIDE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if notes is not None:
        notes.append(f"large image {w}×{h} downscaled to {size[0]}×{size[1]}")
    return np.stack([np.asarray(Image.fromarray(f.astype(np.float32), mode="F").resize(size, Image.Resampling.BOX))
                     for f in frames])


def finalise(frames: np.ndarray, label: str, notes: list[str] | None = None) -> np.ndarray:
    frames = limit_size(np.asarray(frames, dtype=np.float32), label, notes)
    if not np.isfinite(frames).all():
        bad = ~np.isfinite(frames)
        if bad.all():
            raise ScanError(label, "has no finite pixel values")
        frames = np.where(bad, np.nanmin(np.where(bad, np.nan, frames)), frames)
    return frames


def read_scan(source: Source, name: str | None = None) -> Scan:
    """Read a scan from a path or bytes; the format comes from the content, not the extension."""
    data, label = read_source(source, name, ScanError)
    fmt = detect_format(data)
    if fmt is None:
        raise ScanError(label, "is not a supported scan (DICOM, NIfTI, MHA, NRRD, PNG, JPEG, TIFF or BMP); "
                               "its content matches none of them")
    if fmt == "dicom":
        from core.data.readers.dicom import read_dicom
        scan = read_dicom(data, label)
    elif fmt in ("nifti", "nrrd", "mha"):
        from core.data.readers.volume import read_volume
        scan = read_volume(data, label, fmt)
    else:
        from core.data.readers.raster import read_raster
        scan = read_raster(data, label, fmt)
    if scan.is_volume:
        scan.notes.append(f"a volume of {scan.n_slices} slices: the model reads one 2D plane "
                          f"(default: the middle slice, {scan.n_slices // 2})")
    return scan
