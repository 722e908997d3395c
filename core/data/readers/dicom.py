"""DICOM through pydicom: modality LUT (rescale), VOI LUT or window, MONOCHROME1, colour, multi-frame.

Compressed transfer syntaxes decode through the pylibjpeg plug-ins in requirements.txt; old-style files
without a file-meta header get the transfer syntax their encoding shows. Patient identifiers are removed
from the dataset right after parsing, before anything else touches it, and only a short whitelist of
technical facts leaves this module. The header is checked (size known, within MAX_VOXELS, matched by the
bytes present) before any pixel is decoded; whether the pixels themselves may show identifiers
(burned-in annotation, screenshots) is reported in `Scan.pixel_identifiers`.
"""

from __future__ import annotations

import io
import logging
import math
import warnings

import numpy as np
import pydicom
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.pixels.utils import get_expected_length

from core.data.readers.scan import Scan, check_dimensions, finalise, to_gray
from core.errors import ScanError

# Real files break value rules (over-long UIDs, odd date formats) that do not matter for reading pixels;
# pydicom would log and warn about each one on every read. Its decoder failures become our own messages
# (ScanError), so its logged tracebacks would only repeat them.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
logging.getLogger("pydicom").setLevel(logging.CRITICAL)

# Attributes that identify a patient, a visit or a place (a subset of DICOM PS3.15's basic profile
# that covers what real files carry); every PN-valued element and all private tags go as well.
IDENTIFYING_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "OtherPatientIDs", "OtherPatientIDsSequence",
    "OtherPatientNames", "PatientBirthDate", "PatientBirthTime", "PatientBirthName", "PatientMotherBirthName",
    "PatientAddress", "PatientTelephoneNumbers", "PatientInsurancePlanCodeSequence", "MedicalRecordLocator",
    "PatientComments", "MilitaryRank", "BranchOfService", "Occupation", "EthnicGroup", "PatientReligiousPreference",
    "ResponsiblePerson", "ResponsibleOrganization", "AccessionNumber", "StudyID", "InstitutionName",
    "InstitutionAddress", "InstitutionalDepartmentName", "InstitutionCodeSequence", "StationName",
    "DeviceSerialNumber", "ReferringPhysicianName", "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
    "PerformingPhysicianName", "OperatorsName", "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy",
    "RequestingPhysician", "ScheduledPerformingPhysicianName", "StudyInstanceUID", "SeriesInstanceUID",
    "SOPInstanceUID", "FrameOfReferenceUID", "MediaStorageSOPInstanceUID", "StudyDate", "StudyTime", "SeriesDate",
    "SeriesTime", "AcquisitionDate", "AcquisitionTime", "ContentDate", "ContentTime", "AcquisitionDateTime",
    "StudyDescription", "SeriesDescription", "RequestAttributesSequence", "AdmissionID", "CurrentPatientLocation",
    "PatientAge", "PatientSize", "PatientWeight", "RegionOfResidence", "CountryOfResidence",
)
# The only facts kept (technical, non-identifying).
SAFE_INFO = ("Modality", "BodyPartExamined", "ViewPosition", "PhotometricInterpretation", "Rows", "Columns",
             "BitsStored", "NumberOfFrames", "SamplesPerPixel")
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Without these the image's size is unknown.
REQUIRED_PIXEL_MODULE = ("Rows", "Columns", "BitsAllocated")
# Old files sometimes omit these; the values the standard implies for a plain greyscale image.
GREY_DEFAULTS = {"SamplesPerPixel": 1, "PhotometricInterpretation": "MONOCHROME2", "PixelRepresentation": 0}
# How pydicom found a file encoded (implicit VR, little endian) → the transfer syntax that says so.
ENCODING_SYNTAX = {(True, True): uid.ImplicitVRLittleEndian, (False, True): uid.ExplicitVRLittleEndian,
                   (False, False): uid.ExplicitVRBigEndian}
# Screenshots and digitised documents: their pixels often show patient details.
SECONDARY_CAPTURE = {uid.SecondaryCaptureImageStorage, uid.MultiFrameSingleBitSecondaryCaptureImageStorage,
                     uid.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
                     uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
                     uid.MultiFrameTrueColorSecondaryCaptureImageStorage}
# Modalities whose pixels often carry burned-in patient details, with the reason shown to the user.
BURNED_IN_MODALITIES = {
    "US": "ultrasound (US) images often carry burned-in patient details",
    "SC": "secondary-capture (SC) images are often screenshots with burned-in patient details",
    "OT": "images of modality 'other' (OT) are often screenshots or scans with burned-in patient details",
    "XC": "external-camera photographs (XC) may show the patient or burned-in details",
    "ES": "endoscopy (ES) images often carry burned-in patient details",
}


def deidentify(ds: Dataset) -> Dataset:
    """Remove identifiers in place (recursively, including sequences) and return the dataset."""
    ds.remove_private_tags()

    def drop(dataset: Dataset, elem: pydicom.DataElement) -> None:
        if elem.VR == "PN" or elem.keyword in IDENTIFYING_KEYWORDS:
            del dataset[elem.tag]

    ds.walk(drop)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta:
        del meta.MediaStorageSOPInstanceUID
    return ds


def _first(value: object) -> float | None:
    """WindowCenter/Width may be multi-valued; the first pair is the default."""
    if value is None:
        return None
    try:
        return float(value[0] if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else value)
    except (TypeError, ValueError, IndexError):
        return None


def _reason(e: BaseException) -> str:
    """A decoder's own explanation (first line, short), else the exception's class name."""
    text = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
    return text or type(e).__name__


def pixel_identifier_risk(ds: Dataset) -> str | None:
    """Why this image's pixels may show patient identifiers (burned-in text, a screenshot), else None."""
    burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if burned == "YES":
        return "the DICOM header says the pixels carry burned-in annotation (BurnedInAnnotation = YES)"
    if burned == "NO":
        return None  # the modality's usual risk is overruled by an explicit statement
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality in BURNED_IN_MODALITIES:
        return BURNED_IN_MODALITIES[modality]
    meta = getattr(ds, "file_meta", None)
    sop_class = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else None)
    if sop_class in SECONDARY_CAPTURE:
        return "secondary-capture images are often screenshots with burned-in patient details"
    return None


def read_dicom(data: bytes, label: str) -> Scan:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except EOFError:
        raise ScanError(label, "is a truncated DICOM file (it ends inside its header)") from None
    except (InvalidDicomError, ValueError, TypeError, OSError, KeyError, IndexError, OverflowError) as e:
        # pydicom's message may quote raw element bytes, which may identify a patient: the class name only
        raise ScanError(label, f"is not a readable DICOM file: its header cannot be parsed "
                               f"({type(e).__name__})") from None
    except Exception as e:  # noqa: BLE001 - pydicom raises many types on hostile bytes
        raise ScanError(label, f"is a corrupt DICOM file: its header cannot be parsed "
                               f"({type(e).__name__})") from None
    try:
        return _decode(ds, label)
    except ScanError:
        raise
    except Exception as e:  # noqa: BLE001 - elements are parsed lazily, so a corrupt one can fail anywhere
        raise ScanError(label, "is a truncated or corrupt DICOM file: an element of its header cannot be parsed "
                               f"({type(e).__name__})") from None


def _transfer_syntax(ds: Dataset, pixel_keyword: str, label: str, notes: list[str]) -> uid.UID:
    """The file's transfer syntax; for an old-style file without one (no file-meta header, as ACR-NEMA
    and many older archives write), the one matching how pydicom found the dataset encoded."""
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    ts = meta.get("TransferSyntaxUID")
    if ts:
        return ts
    if ds[pixel_keyword].is_undefined_length:
        raise ScanError(label, "has compressed pixel data but no transfer syntax (its file-meta header is "
                               "missing), so the codec to decode it with is unknown")
    inferred = ENCODING_SYNTAX.get(tuple(getattr(ds, "original_encoding", (None, None))))
    if inferred is None:
        raise ScanError(label, "has no transfer syntax (no file-meta header) and an encoding (implicit VR, "
                               "big endian) that DICOM does not define")
    meta.TransferSyntaxUID = inferred
    notes.append(f"old-style DICOM without a transfer syntax in its header: read as {inferred.name}, "
                 "the encoding its content shows")
    return inferred


def _number_of_frames(ds: Dataset) -> int:
    n = _first(ds.get("NumberOfFrames"))
    return int(n) if n is not None and math.isfinite(n) and n >= 1 else 1


def _check_pixel_module(ds: Dataset, pixel_keyword: str, ts: uid.UID, label: str, notes: list[str]) -> None:
    """From the header alone, before anything is decoded: the image's size is known, within the limit,
    and (uncompressed) matched by the bytes present."""
    missing = [k for k in REQUIRED_PIXEL_MODULE if ds.get(k) in (None, "")]
    if missing:
        raise ScanError(label, f"has pixel data but its header lacks {', '.join(missing)}, so the image's size "
                               "is unknown")
    rows, cols, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
    if bits not in (1, 8, 16, 32, 64):
        raise ScanError(label, f"has BitsAllocated = {bits}; DICOM allows 1, 8, 16, 32 or 64")
    assumed = [f"{k} = {v}" for k, v in GREY_DEFAULTS.items() if ds.get(k) in (None, "")]
    for k, v in GREY_DEFAULTS.items():
        if ds.get(k) in (None, ""):
            setattr(ds, k, v)
    if ds.get("BitsStored") in (None, ""):
        ds.BitsStored = bits
        assumed.append(f"BitsStored = {bits}")
    if assumed:
        notes.append(f"the DICOM header lacks {len(assumed)} pixel attribute(s); assumed {', '.join(assumed)}")
    frames, samples = _number_of_frames(ds), int(ds.SamplesPerPixel)
    check_dimensions(label, (cols, rows, frames), samples)
    if ts.is_encapsulated:
        return  # compressed: the codec checks its own stream
    need, have = get_expected_length(ds, "bytes"), len(ds[pixel_keyword].value or b"")
    if have < need:
        kind = f"{bits}-bit" + (f" {samples}-sample" if samples > 1 else "")
        raise ScanError(label, f"pixel data has {have} bytes; the header's {cols}×{rows}×{frames} {kind} image "
                               f"needs {need} (the file is truncated or its header is wrong)")


def _pixels(ds: Dataset, ts: uid.UID, label: str) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ds.pixel_array
    except (NotImplementedError, RuntimeError) as e:
        if "decoder" in str(e).lower() or "plugin" in str(e).lower() or "not supported" in str(e).lower():
            raise ScanError(label, f"uses the '{ts.name}' transfer syntax, which no installed decoder reads") from None
        raise ScanError(label, f"pixel data cannot be decoded ({_reason(e)})") from None
    except MemoryError:
        raise ScanError(label, "pixel data is too large to decode in the memory available") from None
    except (ValueError, EOFError, AttributeError, KeyError, TypeError, IndexError, OverflowError) as e:
        raise ScanError(label, f"pixel data is truncated or corrupt ({_reason(e)})") from None
    except Exception as e:  # noqa: BLE001 - decoder plug-ins raise their own types on corrupt streams
        raise ScanError(label, f"pixel data cannot be decoded ({_reason(e)})") from None


def _decode(ds: Dataset, label: str) -> Scan:
    deidentify(ds)  # first: nothing below, messages included, can see an identifier

    pixel_keyword = next((k for k in PIXEL_KEYWORDS if k in ds), None)
    if pixel_keyword is None:
        if "Rows" in ds or "Columns" in ds:
            raise ScanError(label, "describes an image (Rows, Columns) but has no pixel data: the file is truncated "
                                   "or incomplete")
        kind = str(ds.get("Modality", "") or "non-image")
        raise ScanError(label, f"is a DICOM {kind} object without pixel data (not an image); upload an image series")
    notes: list[str] = []
    ts = _transfer_syntax(ds, pixel_keyword, label, notes)
    _check_pixel_module(ds, pixel_keyword, ts, label, notes)
    arr = _pixels(ds, ts, label)

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    n_frames = _number_of_frames(ds)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    window: tuple[float, float] | None = None
    if samples > 1 or photometric == "PALETTE COLOR":
        notes.append(f"colour DICOM ({photometric}) converted to grey for a greyscale model")
    try:
        if photometric == "PALETTE COLOR":
            arr = to_gray(apply_color_lut(arr, ds))
        elif samples > 1:
            arr = to_gray(arr)  # pydicom already converted YBR to RGB
        else:
            arr = apply_modality_lut(arr, ds).astype(np.float32)
            if "VOILUTSequence" in ds:
                arr = np.asarray(apply_voi_lut(arr, ds, index=0, prefer_lut=True), dtype=np.float32)
                lo, hi = float(arr.min()), float(arr.max())
                window = ((lo + hi) / 2, max(hi - lo, 1.0))
            else:
                centre, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
                if centre is not None and width is not None and width > 0:
                    window = (centre, width)
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
        raise ScanError(label, f"has inconsistent pixel attributes ({_reason(e)})") from None

    frames = np.asarray(arr, dtype=np.float32)
    if frames.ndim == 2:
        frames = frames[None]
    elif frames.ndim != 3 or (n_frames > 1 and frames.shape[0] != n_frames):
        raise ScanError(label, f"has pixel data of unexpected shape {tuple(frames.shape)}")
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    info = {k: str(ds.get(k)) for k in SAFE_INFO if ds.get(k) is not None}
    info["TransferSyntax"] = ts.name
    return Scan(pixels=finalise(frames, label, notes), source_format="dicom", notes=notes,
                modality=str(ds.get("Modality") or "OT"), window=window, invert=photometric == "MONOCHROME1",
                spacing=tuple(float(s) for s in spacing) if spacing else None, info=info,
                pixel_identifiers=pixel_identifier_risk(ds))
