"""DICOM ingestion: sources (folder, zip, DICOMweb) -> series selection -> volumes with geometry.

Public API (CONTRACTS.md): load_study, Study, Volume, SeriesKind, IngestKind and the sources.
The DICOMweb source lives in cds.dicom.sources.dicomweb and is imported only by those who need it.
"""

from cds.dicom.errors import IngestKind
from cds.dicom.limits import DEFAULT_LIMITS, IngestLimits
from cds.dicom.selection import SeriesKind
from cds.dicom.sources import DicomSource, FolderSource, InstanceRef, ZipSource
from cds.dicom.study import SeriesInfo, Study, load_study
from cds.dicom.volume import Volume

__all__ = [
    "DEFAULT_LIMITS",
    "DicomSource",
    "FolderSource",
    "IngestKind",
    "IngestLimits",
    "InstanceRef",
    "SeriesInfo",
    "SeriesKind",
    "Study",
    "Volume",
    "ZipSource",
    "load_study",
]
