"""DICOM through pydicom: modality LUT (rescale), VOI LUT or window, MONOCHROME1, colour, multi-frame.

Compressed transfer syntaxes decode through the pylibjpeg plug-ins in requirements.txt. Patient
identifiers are removed from the dataset right after parsing, before anything else touches it, and only
a short whitelist of technical facts leaves this module.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from core.data.readers.scan import Scan, finalise, to_gray
from core.errors import ScanError

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


def read_dicom(data: bytes, label: str) -> Scan:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, EOFError, ValueError, TypeError, OSError, KeyError, IndexError, OverflowError) as e:
        raise ScanError(label, f"is not a readable DICOM file ({type(e).__name__})") from None
    except Exception as e:  # noqa: BLE001 - pydicom raises many types on hostile bytes
        raise ScanError(label, f"is a corrupt DICOM file ({type(e).__name__})") from None
    try:
        return _decode(ds, label)
    except ScanError:
        raise
    except Exception as e:  # noqa: BLE001 - elements are parsed lazily, so a corrupt one can fail anywhere
        raise ScanError(label, f"is a corrupt DICOM file ({type(e).__name__})") from None


def _decode(ds: Dataset, label: str) -> Scan:
    deidentify(ds)

    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        kind = str(ds.get("Modality", "") or "non-image")
        raise ScanError(label, f"is a DICOM {kind} object without pixel data (not an image); upload an image series")
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except (NotImplementedError, RuntimeError) as e:
        if "decoder" in str(e).lower() or "plugin" in str(e).lower() or "not supported" in str(e).lower():
            name = ts.name if ts is not None else "unknown"
            raise ScanError(label, f"uses the '{name}' transfer syntax, which no installed decoder reads") from None
        raise ScanError(label, f"pixel data cannot be decoded ({type(e).__name__})") from None
    except (ValueError, EOFError, AttributeError, KeyError, TypeError, IndexError, OverflowError, MemoryError) as e:
        raise ScanError(label, f"pixel data is truncated or corrupt ({type(e).__name__})") from None
    except Exception as e:  # noqa: BLE001 - decoder plug-ins raise their own types on corrupt streams
        raise ScanError(label, f"pixel data cannot be decoded ({type(e).__name__})") from None

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    n_frames = int(_first(ds.get("NumberOfFrames")) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    window: tuple[float, float] | None = None
    notes: list[str] = []
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
        raise ScanError(label, f"has inconsistent pixel attributes ({type(e).__name__})") from None

    frames = np.asarray(arr, dtype=np.float32)
    if frames.ndim == 2:
        frames = frames[None]
    elif frames.ndim != 3 or (n_frames > 1 and frames.shape[0] != n_frames):
        raise ScanError(label, f"has pixel data of unexpected shape {tuple(frames.shape)}")
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    info = {k: str(ds.get(k)) for k in SAFE_INFO if ds.get(k) is not None}
    if ts is not None:
        info["TransferSyntax"] = ts.name
    return Scan(pixels=finalise(frames, label, notes), source_format="dicom", notes=notes, modality=str(ds.get("Modality") or "OT"),
                window=window, invert=photometric == "MONOCHROME1",
                spacing=tuple(float(s) for s in spacing) if spacing else None, info=info)
