"""Where studies come from: FolderSource, ZipSource, DicomWebSource behind the DicomSource protocol."""

from cds.dicom.sources.base import DicomSource, InstanceRef
from cds.dicom.sources.folder import FolderSource
from cds.dicom.sources.zipped import ZipSource

__all__ = ["DicomSource", "FolderSource", "InstanceRef", "ZipSource"]
