"""DICOM on pydicom's bundled real files: rescale, windows, VOI LUT, MONOCHROME1, multi-frame,
compressed transfer syntaxes, broken files, and identifiers that never leave the reader."""

from __future__ import annotations

import io
import pickle
import re
import time
import tracemalloc
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from core.data.readers import read_scan
from core.data.readers.scan import MAX_VOXELS
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


@pytest.mark.parametrize("name, message", [("MR_truncated.dcm", ("pixel data has 8130 bytes; the header's 64×64×1 "
                                                                 "16-bit image needs 8192")),
                                           ("meta_missing_tsyntax.dcm", "header lacks Rows, Columns, BitsAllocated"),
                                           ("rtplan.dcm", "without pixel data"),
                                           ("waveform_ecg.dcm", "without pixel data")])
def test_broken_or_non_image_dicom_gets_a_clear_error(name, message):
    with pytest.raises(ScanError, match=message) as e:
        read_scan(get_testdata_file(name))
    assert name in str(e.value)


def test_truncated_bytes_and_junk_renamed_dcm(tmp_path):
    data = open(get_testdata_file("CT_small.dcm"), "rb").read()
    with pytest.raises(ScanError, match="half.dcm: pixel data has 13303 bytes; the header's 128×128×1 16-bit "
                                        "image needs 32768"):
        read_scan(data[: len(data) // 2], name="half.dcm")
    with pytest.raises(ScanError, match="cut.dcm: describes an image .* but has no pixel data: the file is truncated"):
        read_scan(data[: data.find(b"\xe0\x7f\x10\x00")], name="cut.dcm")  # cut before (7FE0,0010)
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


def _without_file_meta(ds: pydicom.Dataset, implicit_vr: bool, little_endian: bool) -> bytes:
    """The dataset as an old-style file: no preamble, no 'DICM', no (0002) group, no transfer syntax."""
    del ds.file_meta
    ds.preamble = None
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, implicit_vr=implicit_vr, little_endian=little_endian)
    data = buf.getvalue()
    assert data[128:132] != b"DICM" and data[:2] not in (b"\x02\x00", b"\x00\x02")
    return data


@pytest.mark.parametrize("name, implicit_vr, little_endian, syntax", [
    ("CT_small.dcm", False, True, "Explicit VR Little Endian"),
    ("MR_small.dcm", True, True, "Implicit VR Little Endian"),
    ("MR_small_bigendian.dcm", False, False, "Explicit VR Big Endian")])
def test_old_style_dicom_without_file_meta_reads_the_same_pixels(name, implicit_vr, little_endian, syntax):
    original = read_scan(get_testdata_file(name))
    ds = pydicom.dcmread(get_testdata_file(name))
    ds.BodyPartExamined = "CHEST"
    scan = read_scan(_without_file_meta(ds, implicit_vr, little_endian), name="old.dcm")
    np.testing.assert_array_equal(scan.pixels, original.pixels)
    assert scan.window == original.window and scan.modality == original.modality
    assert scan.info["TransferSyntax"] == syntax
    # the domain check reads these from every DICOM, old-style included
    assert scan.info["Modality"] == original.modality and scan.info["BodyPartExamined"] == "CHEST"
    assert any("old-style DICOM" in n and syntax in n for n in scan.notes)


@pytest.mark.parametrize("name", ["ExplVR_LitEndNoMeta.dcm", "ExplVR_BigEndNoMeta.dcm", "rtstruct.dcm"])
def test_pydicoms_files_without_file_meta_get_their_real_cause(name):
    # none of these carries an image: the message says so, whatever their encoding
    with pytest.raises(ScanError, match="without pixel data") as e:
        read_scan(get_testdata_file(name))
    assert "Error" not in str(e.value)


def test_compressed_pixels_without_a_transfer_syntax_are_refused_by_name():
    ds = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))
    del ds.file_meta
    ds.preamble = None
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, implicit_vr=False, little_endian=True)
    with pytest.raises(ScanError, match="compressed pixel data but no transfer syntax"):
        read_scan(buf.getvalue(), name="old.dcm")


def test_missing_optional_pixel_attributes_are_assumed_with_a_notice():
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    for k in ("PhotometricInterpretation", "SamplesPerPixel", "BitsStored"):
        del ds[k]
    scan = read_scan(_bytes(ds), name="old.dcm")
    np.testing.assert_array_equal(scan.pixels, read_scan(get_testdata_file("MR_small.dcm")).pixels)
    assert scan.notes == ["the DICOM header lacks 3 pixel attribute(s); assumed SamplesPerPixel = 1, "
                          "PhotometricInterpretation = MONOCHROME2, BitsStored = 16"]


@pytest.mark.parametrize("keyword", ["Rows", "Columns", "BitsAllocated"])
def test_missing_size_attributes_are_named(keyword):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds[keyword]
    with pytest.raises(ScanError, match=f"header lacks {keyword}, so the image's size is unknown"):
        read_scan(_bytes(ds), name="x.dcm")


def test_header_claiming_a_huge_image_is_refused_before_decoding():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))  # 32 kB of real pixel data
    ds.Rows, ds.Columns, ds.NumberOfFrames = 60000, 60000, 1000
    data = _bytes(ds)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ScanError, match=re.escape(f"60000×60000×1000 image (3,600,000,000,000 values); "
                                                      f"scans over {MAX_VOXELS:,} values")):
            read_scan(data, name="huge.dcm")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 2 and peak < 20 * 2**20


def test_ultrasound_and_secondary_capture_pixels_may_carry_identifiers():
    for name in ("examples_rgb_color.dcm", "examples_palette.dcm", "ExplVR_BigEnd.dcm"):
        scan = read_scan(get_testdata_file(name))
        assert scan.pixel_identifiers == "ultrasound (US) images often carry burned-in patient details", name
        assert not any("burned-in" in n for n in scan.notes)
        assert scan.view().pixel_identifiers == scan.pixel_identifiers
    assert "secondary-capture" in read_scan(get_testdata_file("JPEG2000.dcm")).pixel_identifiers  # NM, SC class
    assert "(OT)" in read_scan(get_testdata_file("SC_rgb_rle.dcm")).pixel_identifiers
    assert read_scan(get_testdata_file("CT_small.dcm")).pixel_identifiers is None


def test_burned_in_annotation_tag_decides():
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ct.BurnedInAnnotation = "YES"
    scan = read_scan(_bytes(ct))
    assert scan.pixel_identifiers == ("the DICOM header says the pixels carry burned-in annotation "
                                      "(BurnedInAnnotation = YES)")
    us = pydicom.dcmread(get_testdata_file("examples_palette.dcm"))
    us.BurnedInAnnotation = "NO"  # an explicit statement overrules the modality's usual risk
    assert read_scan(_bytes(us)).pixel_identifiers is None
