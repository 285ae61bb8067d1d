"""One interface for every place DICOM comes from (folder, zip, DICOMweb).

Why two calls instead of "give me all datasets": choosing series needs only headers, and pixel
data is most of the bytes. Sources therefore yield header-only data sets first (pydicom
stop_before_pixels, or WADO-RS metadata), and full instances only for the series that were chosen.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pydicom.dataset import Dataset


@dataclass(frozen=True)
class InstanceRef:
    """Where one instance lives inside its source; opaque to everything but that source."""

    key: str  # file path, zip member name, or SOPInstanceUID (DICOMweb)
    study_uid: str = ""
    series_uid: str = ""


@runtime_checkable
class DicomSource(Protocol):
    def describe(self) -> str:
        """A PHI-free description for logs and error messages (never credentials)."""
        ...

    def iter_headers(self) -> Iterator[tuple[InstanceRef, Dataset]]:
        """Header-only data sets (no pixel data) of every DICOM instance; skips non-DICOM files."""
        ...

    def read_instances(self, refs: Sequence[InstanceRef]) -> Iterator[tuple[InstanceRef, Dataset]]:
        """Full data sets (with pixel data) for `refs`, in any order."""
        ...
