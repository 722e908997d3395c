"""DICOM on pydicom's bundled real files: rescale, windows, VOI LUT, MONOCHROME1, multi-frame,
compressed transfer syntaxes, broken files, and identifiers that never leave the reader."""

from __future__ import annotations

import io
import pickle
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from core.data.readers import read_scan
from core.errors import ScanError

warnings.filterwarnings("ignore", module="pydicom")


def _bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_ct_rescale_gives_hounsfield_units():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    scan = read_scan(path)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(scan.pixels[0], expected)
    assert scan.modality == "CT" and scan.pixels.min() < -500  # air in HU


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "MR_small_bigendian.dcm", "MR_small_implicit.dcm"])
def test_lossless_transfer_syntaxes_decode_to_the_same_pixels(name):
    reference = read_scan(get_testdata_file("MR_small.dcm"))
    scan = read_scan(get_testdata_file(name))
    np.testing.assert_array_equal(scan.pixels, reference.pixels)
    assert scan.window == (600.0, 1600.0)  # window centre/width from the file


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "JPGExtended.dcm", "SC_rgb_jpeg_dcmtk.dcm", "693_J2KI.dcm",
                                  "JPEGLSNearLossless_16.dcm", "image_dfl.dcm"])
def test_lossy_and_other_compressed_files_read(name):
    scan = read_scan(get_testdata_file(name))
    assert scan.pixels.ndim == 3 and np.isfinite(scan.pixels).all() and scan.pixels.std() > 0
    img = scan.model_input(128)
    assert img.shape == (128, 128) and 0 <= img.min() and img.max() <= 1


def test_multiframe_is_a_volume_with_slices_and_projection():
    scan = read_scan(get_testdata_file("rtdose.dcm"))
    assert scan.n_slices == 15 and scan.is_volume
    assert np.allclose(scan.plane(projection="max"), scan.pixels.max(0))
    assert not np.allclose(scan.plane(0), scan.plane(14))
    with pytest.raises(ScanError, match="slice 20 does not exist"):
        scan.plane(20)


def test_colour_dicom_is_reduced_to_luminance():
    scan = read_scan(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    assert scan.pixels.shape == (2, 100, 100)


def test_monochrome1_displays_inverted():
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    normal = read_scan(_bytes(ds))
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = read_scan(_bytes(ds))
    assert inverted.invert and not normal.invert
    np.testing.assert_allclose(inverted.display(), 1.0 - normal.display(), atol=1e-6)


def test_voi_lut_sequence_is_applied():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    lut = Dataset()
    lut.add_new(0x00283002, "SS", [256, -1024, 16])  # LUTDescriptor: 256 entries from -1024, 16-bit output
    lut.add_new(0x00283006, "US", list(range(0, 4096, 16)))  # LUTData
    ds.VOILUTSequence = Sequence([lut])
    for k in ("WindowCenter", "WindowWidth"):
        if k in ds:
            del ds[k]
    with_lut = read_scan(_bytes(ds))
    plain = read_scan(get_testdata_file("CT_small.dcm"))
    assert with_lut.window is not None
    assert with_lut.pixels.max() <= 4080 and not np.allclose(with_lut.pixels, plain.pixels)
    # the LUT is monotonic, so the order of pixel values is kept
    a, b = plain.pixels.ravel(), with_lut.pixels.ravel()
    order = np.argsort(a)
    assert (np.diff(b[order]) >= 0).all()


def test_file_without_preamble_is_detected_by_content():
    # no 128-byte preamble and no 'DICM': still recognised (and then refused for having no image)
    with pytest.raises(ScanError, match="DICOM RTPLAN object without pixel data"):
        read_scan(get_testdata_file("ExplVR_LitEndNoMeta.dcm"))


@pytest.mark.parametrize("name, message", [("MR_truncated.dcm", "truncated or corrupt"),
                                           ("rtplan.dcm", "without pixel data"),
                                           ("waveform_ecg.dcm", "without pixel data")])
def test_broken_or_non_image_dicom_gets_a_clear_error(name, message):
    with pytest.raises(ScanError, match=message) as e:
        read_scan(get_testdata_file(name))
    assert name in str(e.value)


def test_truncated_bytes_and_junk_renamed_dcm(tmp_path):
    data = open(get_testdata_file("CT_small.dcm"), "rb").read()
    with pytest.raises(ScanError):
        read_scan(data[: len(data) // 2], name="half.dcm")
    junk = tmp_path / "report.dcm"
    junk.write_bytes(b"%PDF-1.4 this is not an image" * 20)
    with pytest.raises(ScanError, match="report.dcm: is not a supported scan"):
        read_scan(junk)
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    with pytest.raises(ScanError, match="empty"):
        read_scan(empty)


def test_patient_identifiers_never_leave_the_reader(identified_dicom):
    dicom, secrets = identified_dicom
    scan = read_scan(dicom)
    blob = pickle.dumps(scan) + repr(scan.info).encode()
    for v in secrets:
        assert v.encode() not in blob
