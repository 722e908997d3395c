"""PNG, JPEG, TIFF and BMP through Pillow (8- or 16-bit grey, RGB reduced to luminance)."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

from core.data.readers.scan import MAX_PIXELS, MAX_SIDE, Scan, finalise, to_gray
from core.errors import ScanError


def read_raster(data: bytes, label: str, fmt: str) -> Scan:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = MAX_PIXELS
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > MAX_PIXELS:
                raise ScanError(label, f"is {img.width}×{img.height} pixels; images over "
                                       f"{MAX_PIXELS // 1_000_000} megapixels are refused")
            if fmt == "jpeg" and max(img.size) > MAX_SIDE:
                img.draft("L", (MAX_SIDE, MAX_SIDE))  # decode huge JPEGs at reduced size
            frames, notes = [], []
            if max(img.size) > MAX_SIDE:
                notes.append(f"large image {img.width}×{img.height} downscaled to at most {MAX_SIDE} px")
            if img.mode not in ("L", "I", "I;16", "I;16B", "F", "1"):
                notes.append(f"colour image ({img.mode}) converted to grey for a greyscale model")
            for frame in ImageSequence.Iterator(img):
                if frame.mode in ("P", "PA", "LA", "1", "CMYK", "YCbCr", "HSV", "LAB"):
                    frame = frame.convert("RGBA" if frame.mode in ("P", "PA", "LA") else "RGB")
                if max(frame.size) > MAX_SIDE:
                    frame = frame.copy()
                    frame.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.BOX)
                frames.append(to_gray(np.asarray(frame)).astype(np.float32))
    except ScanError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ScanError(label, f"is larger than {MAX_PIXELS // 1_000_000} megapixels; refused") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, TypeError) as e:
        raise ScanError(label, f"is a corrupt or truncated {fmt.upper()} image ({type(e).__name__})") from None
    if not frames or len({f.shape for f in frames}) != 1:
        raise ScanError(label, f"is a {fmt.upper()} with frames of different sizes")
    arr = np.stack(frames)
    bits = "16" if arr.max() > 255 else "8"
    return Scan(pixels=finalise(arr, label), source_format=fmt, modality="OT", notes=notes,
                window=(127.5, 255.0) if bits == "8" else None,  # 16-bit: percentile window
                info={"Rows": str(arr.shape[1]), "Columns": str(arr.shape[2]), "Bits": bits})
