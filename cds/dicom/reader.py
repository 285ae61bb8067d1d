"""Parse one DICOM Part 10 stream into a pydicom Dataset, turning every failure into an IngestError.

pydicom is lenient by design: a file cut short is read "successfully" with its last value shortened
or its last elements missing. Medical input must not be accepted that way, so after parsing we
check that every top-level value is as long as its header declared, and treat pydicom's
end-of-file warnings as truncation.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from cds.dicom.errors import IngestKind, ingest_error

DICM_OFFSET = 128
MAGIC = b"DICM"
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_UNDEFINED_LENGTH = 0xFFFFFFFF
# warnings.catch_warnings swaps process-global state; job workers are threads, so reads that
# inspect pydicom's warnings take turns (parsing is GIL-bound anyway).
_WARNINGS_LOCK = threading.Lock()


def file_label(name: str) -> str:
    """A stable, PHI-free name for a file in messages: exports often name files and folders after
    the patient, so errors and logs carry a short hash of the path instead of the path."""
    return f"file {hashlib.sha256(name.encode('utf-8', 'surrogateescape')).hexdigest()[:10]}"


def has_dicom_magic(head: bytes) -> bool:
    """True for a Part 10 file: 128-byte preamble followed by 'DICM'."""
    return len(head) >= DICM_OFFSET + 4 and head[DICM_OFFSET : DICM_OFFSET + 4] == MAGIC


def read_dataset(fp: BinaryIO, label: str, *, headers_only: bool) -> Dataset:
    """Read a Part 10 stream. `label` names the file in errors (a path or member name, no PHI)."""
    with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = dcmread(fp, stop_before_pixels=headers_only)
        except InvalidDicomError as exc:
            raise ingest_error(IngestKind.NOT_DICOM, f"{label} is not a DICOM Part 10 file") from exc
        except (EOFError, OSError) as exc:
            raise ingest_error(IngestKind.TRUNCATED, f"{label} ends before its data set is complete") from exc
        except Exception as exc:  # pydicom raises many types on corrupt input; all mean the same here
            raise ingest_error(IngestKind.CORRUPT, f"{label} could not be parsed as DICOM") from exc
    if any("end of file" in str(w.message).lower() for w in caught):
        raise ingest_error(IngestKind.TRUNCATED, f"{label} ends before its data set is complete")
    _check_complete(ds, label)
    return ds


def _check_complete(ds: Dataset, label: str) -> None:
    for tag in list(ds.keys()):
        elem = ds.get_item(tag)
        if not isinstance(elem, RawDataElement) or elem.value is None:
            continue
        if elem.length != _UNDEFINED_LENGTH and len(elem.value) < elem.length:
            raise ingest_error(
                IngestKind.TRUNCATED,
                f"{label} is truncated: element {tag} has {len(elem.value)} of {elem.length} bytes",
            )


def is_dicomdir(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    return bool(meta is not None and str(meta.get("MediaStorageSOPClassUID", "")) == DICOMDIR_SOP_CLASS)
