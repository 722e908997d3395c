"""Volumes through SimpleITK and raster images through Pillow, detected by content."""

from __future__ import annotations

import gzip
import io
import re
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from core.data.readers import read_scan
from core.data.readers.scan import MAX_SIDE, MAX_VOXELS
from core.data.readers.source import MAX_DECOMPRESSED_BYTES, measure_gzip
from core.errors import ScanError


def _volume(tmp_path, suffix: str):
    rng = np.random.default_rng(0)
    arr = rng.normal(0, 50, (12, 40, 30)).astype(np.int16)
    arr[6, 10:20, 5:15] = 900  # a bright block on slice 6
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 0.7, 2.5))
    path = tmp_path / f"vol{suffix}"
    sitk.WriteImage(img, str(path))
    return path, arr


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".mha", ".nrrd"])
def test_volume_formats_read_as_slices(tmp_path, suffix):
    path, arr = _volume(tmp_path, suffix)
    scan = read_scan(path)
    assert scan.pixels.shape == (12, 40, 30) and scan.is_volume
    np.testing.assert_array_equal(scan.plane(6), arr[6].astype(np.float32))
    assert scan.plane(projection="max")[15, 10] == 900
    assert scan.spacing == pytest.approx((2.5, 0.7, 0.8))
    assert scan.model_input(64, slice_index=6).shape == (64, 64)


def test_format_comes_from_content_not_extension(tmp_path):
    path, _ = _volume(tmp_path, ".nii")
    disguised = tmp_path / "scan.png"
    disguised.write_bytes(path.read_bytes())
    assert read_scan(disguised).source_format == "nifti"
    png = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png, format="PNG")
    assert read_scan(png.getvalue(), name="image.dcm").source_format == "png"


@pytest.mark.parametrize("suffix", [".nii", ".mha", ".nrrd", ".nii.gz"])
def test_truncated_volume_is_refused(tmp_path, suffix):
    path, _ = _volume(tmp_path, suffix)
    data = path.read_bytes()
    with pytest.raises(ScanError, match=f"vol{suffix}"):
        read_scan(data[: len(data) // 3], name=path.name)


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def test_png_8_and_16_bit_and_rgb():
    a8 = np.arange(64, dtype=np.uint8).reshape(8, 8)
    s8 = read_scan(_png(a8))
    np.testing.assert_array_equal(s8.pixels[0], a8)
    assert s8.window == (127.5, 255.0)
    a16 = (np.arange(64, dtype=np.uint16) * 1000).reshape(8, 8)
    s16 = read_scan(_png(a16))
    assert s16.pixels.max() == 63000 and s16.window is None
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 1] = 200
    srgb = read_scan(_png(rgb))
    assert srgb.pixels.shape == (1, 8, 8) and srgb.pixels[0, 0, 0] == pytest.approx(0.587 * 200, rel=1e-3)


def test_jpeg_reads():
    buf = io.BytesIO()
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (32, 1))).save(buf, format="JPEG", quality=95)
    scan = read_scan(buf.getvalue(), name="x.jpg")
    assert scan.source_format == "jpeg" and abs(scan.pixels[0, 5, 40] - 160) < 6


def test_truncated_png_is_refused():
    data = _png(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    with pytest.raises(ScanError, match="corrupt or truncated PNG"):
        read_scan(data[:200], name="cut.png")


def test_huge_image_is_resized_not_refused():
    big = np.zeros((3000, 5000), np.uint8)
    big[:, 2500:] = 255
    scan = read_scan(_png(big), name="big.png")
    assert max(scan.pixels.shape[1:]) == MAX_SIDE
    assert scan.pixels.shape[2] / scan.pixels.shape[1] == pytest.approx(5000 / 3000, rel=0.01)


def test_windowing_and_model_input_keep_aspect_ratio():
    arr = np.zeros((40, 80), np.uint8)
    arr[:, 40:] = 255
    img = read_scan(_png(arr)).model_input(64)
    assert img.shape == (64, 64)
    assert img[32, 60] == pytest.approx(1.0) and img[32, 5] == pytest.approx(0.0)


def _small_volume(tmp_path, suffix: str) -> bytes:
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 8, 8), np.int16)), str(tmp_path / f"v{suffix}"))
    return (tmp_path / f"v{suffix}").read_bytes()


def _huge_header(tmp_path, fmt: str) -> bytes:
    """A real file whose header is edited to claim 30000×30000×1000 voxels, followed by a few bytes."""
    if fmt == "nifti":
        header = bytearray(_small_volume(tmp_path, ".nii")[:352])
        struct.pack_into("<4h", header, 40, 3, 30000, 30000, 1000)  # dim[0..3]
        return bytes(header) + bytes(1024)
    data = _small_volume(tmp_path, ".mha" if fmt == "mha" else ".nrrd")
    field = rb"DimSize = 8 8 4" if fmt == "mha" else rb"sizes: 8 8 4"
    assert field in data
    return data.replace(field, field.replace(b"8 8 4", b"30000 30000 1000"))


@pytest.mark.parametrize("fmt", ["nifti", "mha", "nrrd"])
def test_volume_header_claiming_a_huge_size_is_refused_before_decoding(tmp_path, fmt):
    data = _huge_header(tmp_path, fmt)
    tracemalloc.start()
    try:
        with pytest.raises(ScanError, match=re.escape(f"30000×30000×1000 image (900,000,000,000 values); "
                                                      f"scans over {MAX_VOXELS:,} values")):
            read_scan(data, name=f"huge.{fmt}")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20


def _gzip_bomb(head: bytes, mib: int) -> bytes:
    """`head` then `mib` MiB of zeros as one valid gzip stream (1 kB per MiB), built without holding the zeros:
    after a full flush deflate starts afresh, so every further MiB of zeros compresses to the same bytes."""
    zeros = bytes(2**20)
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    start = packer.compress(head) + packer.flush(zlib.Z_FULL_FLUSH)
    block = packer.compress(zeros) + packer.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(head)
    for _ in range(mib):
        crc = zlib.crc32(zeros, crc)
    end = packer.flush()[:-8] + struct.pack("<II", crc, (len(head) + mib * 2**20) & 0xFFFFFFFF)
    return start + block * mib + end


def test_gzip_measure_and_the_bomb_builder_on_small_streams():
    text = b"not a volume, just text. " * 4000
    two_members = gzip.compress(text) + gzip.compress(b"second member")
    assert measure_gzip(two_members, "x", ScanError) == ((text + b"second member")[:65536], len(text) + 13)
    small = _gzip_bomb(b"head", mib=3)
    assert gzip.decompress(small) == b"head" + bytes(3 * 2**20)  # a valid stream, checksum included
    assert measure_gzip(small, "x", ScanError) == (b"head" + bytes(65532), 4 + 3 * 2**20)
    with pytest.raises(ScanError, match="truncated compressed"):
        measure_gzip(small[:-20], "x", ScanError)


def test_gzip_bomb_is_refused_without_inflating_it(tmp_path):
    # a real NIfTI header (8×8×4 voxels) followed by 2 GiB of zeros, compressed to about 2 MB
    header = _small_volume(tmp_path, ".nii")[:352]
    bomb = _gzip_bomb(header, mib=2048)
    assert len(bomb) < 5 * 2**20 and MAX_DECOMPRESSED_BYTES < 2 * 2**30
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ScanError, match="bomb.nii.gz: inflates to more than 1024 MB when decompressed; "
                                            "refused as a decompression bomb"):
            read_scan(bomb, name="bomb.nii.gz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20 and time.perf_counter() - start < 30


def test_corrupt_gzip_volume_names_the_cause(tmp_path):
    data = bytearray(_small_volume(tmp_path, ".nii.gz"))
    data[-6] ^= 0xFF  # the trailer's checksum
    with pytest.raises(ScanError, match="v.nii.gz: is corrupt compressed \\(gzip\\) data"):
        read_scan(bytes(data), name="v.nii.gz")
