"""What kind of scan a model was trained on, checked against what a DICOM header says.

A data set's spec may declare, per image modality, the DICOM values its scans carry, for example
`expect: {modality: [CR, DX], body_part: [CHEST]}` for chest radiographs. A file whose header contradicts
that (a head CT, an abdominal MR, an ultrasound) is refused before the model reads it, with a message naming
the tag and its value; the user may override, and the result then carries a banner. Files without a header
(PNG, JPEG) or without the tag are not contradicted by anything here: the out-of-distribution score
(core/guard/ood.py) judges their pixels.
"""

from __future__ import annotations

from core.data.readers.scan import Scan
from core.errors import ScanError

# spec key → DICOM keyword in `Scan.info`
EXPECT_TAGS = {"modality": "Modality", "body_part": "BodyPartExamined"}
# Projection imaging: one 2-D image per view, never a stack of slices.
PROJECTION_MODALITIES = {"CR", "DX", "MG", "RF", "XA", "IO", "PX"}
# BodyPartExamined values that name the same region (DICOM PS3.16 Annex L uses CHEST; vendors write others).
BODY_PART_SYNONYMS = {"THORAX": "CHEST", "LUNG": "CHEST", "LUNGS": "CHEST", "CHEST_LAT": "CHEST", "CHEST_PA": "CHEST",
                      "CHESTABDOMEN": "CHEST", "TORSO": "CHEST"}


class DomainError(ScanError):
    """A scan whose header says it is not what the model was trained on."""

    def __init__(self, source: str, mismatches: list[str]):
        self.mismatches = mismatches
        super().__init__(source, "; ".join(mismatches) + ". The model was not trained on such scans: its answer "
                                 "would mean nothing. Override only to explore (--allow-domain-mismatch on the command line, the checkbox in the app); the result then carries a warning.")


def check_expect(modality: str, kind: str, expect: dict[str, tuple[str, ...]]) -> None:
    """Validate a spec's `expect` entry (called when the spec is read)."""
    from core.errors import SpecError

    if kind != "image":
        raise SpecError("spec", f"modality '{modality}': 'expect' applies to image modalities only")
    unknown = set(expect) - set(EXPECT_TAGS)
    if unknown:
        raise SpecError("spec", f"modality '{modality}': unknown 'expect' keys {sorted(unknown)}; "
                                f"use {sorted(EXPECT_TAGS)}")
    empty = [k for k, v in expect.items() if not v]
    if empty:
        raise SpecError("spec", f"modality '{modality}': 'expect' lists no values for {empty}")


def _body_part(value: str) -> str:
    v = value.strip().upper().replace(" ", "")
    return BODY_PART_SYNONYMS.get(v, v)


def domain_mismatches(scan: Scan, expect: dict[str, tuple[str, ...]]) -> list[str]:
    """What in the scan's header (or shape) contradicts `expect`; empty when nothing does."""
    if not expect:
        return []
    out = []
    for key, tag in EXPECT_TAGS.items():
        allowed = expect.get(key)
        value = scan.info.get(tag)
        if not allowed or value is None or not str(value).strip():
            continue
        norm = _body_part if key == "body_part" else (lambda v: v.strip().upper())
        if norm(str(value)) not in {norm(a) for a in allowed}:
            out.append(f"its DICOM header says {tag} = {str(value).strip()!r}, and this model was trained on "
                       f"{tag} {' or '.join(allowed)}")
    modalities = set(expect.get("modality", ()))
    if modalities and modalities <= PROJECTION_MODALITIES and scan.is_volume:
        out.append(f"it is a 3-D volume of {scan.n_slices} slices, and this model was trained on 2-D "
                   f"{' or '.join(sorted(modalities))} projection images")
    return out
