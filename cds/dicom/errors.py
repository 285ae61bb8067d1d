"""The stable reasons an ingest can fail, as one enum.

Why an enum: callers (jobs, the analysis record's `reason`, the card text, tests) switch on the
reason, so the strings must never drift. IngestError(kind=...) from cds.errors carries one of these;
IngestKind is a StrEnum, so `err.kind == "not_dicom"` holds for callers that only know the string.
"""

from __future__ import annotations

from enum import StrEnum

from cds.errors import IngestError


class IngestKind(StrEnum):
    EMPTY = "empty"  # no files / no instances at all
    NOT_DICOM = "not_dicom"  # a file, or every file of a folder/zip, is not DICOM
    TRUNCATED = "truncated"  # a DICOM file ends early (header or pixel data)
    CORRUPT = "corrupt"  # DICOM preamble present but the data set cannot be parsed
    MISSING_PIXEL_DATA = "missing_pixel_data"
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"  # compressed and no decoder installed
    UNSUPPORTED_IMAGE = "unsupported_image"  # e.g. colour/multi-frame where a grey stack is needed
    MIXED_STUDIES = "mixed_studies"
    SINGLE_SLICE = "single_slice"
    NO_SAGITTAL_T2 = "no_sagittal_t2"
    NOT_LUMBAR_SPINE = "not_lumbar_spine"
    INCONSISTENT_SPACING = "inconsistent_spacing"
    BAD_GEOMETRY = "bad_geometry"  # missing or degenerate orientation/position/spacing tags
    TOO_LARGE = "too_large"  # absurd sizes: pixels per frame, frames, files, bytes (bombs)
    UNSAFE_ARCHIVE = "unsafe_archive"  # zip with path traversal, links, or an absurd compression ratio
    UNSUPPORTED_ENDPOINT = "unsupported_endpoint"  # FHIR Endpoint we cannot or may not use
    FRAME_OF_REFERENCE_MISMATCH = "frame_of_reference_mismatch"  # series not in one patient space
    STUDY_NOT_FOUND = "study_not_found"  # the requested StudyInstanceUID is not in the source


def ingest_error(kind: IngestKind, message: str) -> IngestError:
    """Build the IngestError for `kind`; messages must stay free of PHI (no names, no IDs)."""
    return IngestError(kind, message)
