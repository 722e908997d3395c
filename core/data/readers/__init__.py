"""Readers for what users bring: scans (DICOM, NIfTI/MHA/NRRD, PNG/JPEG), notes and lab tables.

Every reader accepts a path or raw bytes, detects the format from the content, and raises the
project's own `InputError` subclasses with a message naming the file and the problem.
"""

from core.data.readers.labs import LabPanel, LabValue, read_labs
from core.data.readers.note import read_note
from core.data.readers.scan import Scan, read_scan

__all__ = ["LabPanel", "LabValue", "Scan", "read_labs", "read_note", "read_scan"]
