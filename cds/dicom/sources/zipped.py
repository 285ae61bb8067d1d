"""DICOM files inside a zip archive, read in memory without extracting anything to disk.

Archives are untrusted: member names may try path traversal ('../', absolute paths, drive
letters), members may be symbolic links, and sizes in the central directory may promise a small
file that inflates to gigabytes. Every member is checked before it is inflated, and inflation is
capped at the declared size, so a lying header cannot exceed the limits either. Choosing series
inflates each member only up to its pixel data; whole members are inflated only for the chosen ones.
"""

from __future__ import annotations

import io
import stat
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pydicom.dataset import Dataset

from cds.dicom.errors import IngestKind, ingest_error
from cds.dicom.limits import DEFAULT_LIMITS, IngestLimits
from cds.dicom.reader import DICM_OFFSET, file_label, has_dicom_magic, is_dicomdir, read_dataset
from cds.dicom.sources.base import InstanceRef


@dataclass(frozen=True)
class ZipSource:
    path: Path
    limits: IngestLimits = field(default=DEFAULT_LIMITS)

    def describe(self) -> str:
        return "zip archive"  # never the file name: it may name the patient

    def iter_headers(self) -> Iterator[tuple[InstanceRef, Dataset]]:
        with self._open() as archive:
            members = self._checked_members(archive)
            if not members:
                raise ingest_error(IngestKind.EMPTY, f"{self.describe()} contains no files")
            found = 0
            for info in members:
                if _skipped_name(info.filename):
                    continue
                ds = self._read_header(archive, info)
                if ds is None or is_dicomdir(ds):
                    continue
                found += 1
                yield InstanceRef(info.filename), ds
            if not found:
                raise ingest_error(
                    IngestKind.NOT_DICOM, f"none of the {len(members)} archive members is DICOM"
                )

    def read_instances(self, refs: Sequence[InstanceRef]) -> Iterator[tuple[InstanceRef, Dataset]]:
        with self._open() as archive:
            for ref in refs:
                info = archive.getinfo(ref.key)
                data = self._read_member(archive, info)
                yield ref, read_dataset(io.BytesIO(data), _label(info), headers_only=False)

    def _open(self) -> zipfile.ZipFile:
        try:
            return zipfile.ZipFile(self.path)
        except zipfile.BadZipFile as exc:
            raise ingest_error(
                IngestKind.NOT_DICOM, f"{self.describe()} is not a readable zip archive"
            ) from exc

    def _checked_members(self, archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
        infos = archive.infolist()
        if len(infos) > self.limits.max_zip_entries:
            raise ingest_error(
                IngestKind.TOO_LARGE, f"{self.describe()} has more than {self.limits.max_zip_entries} entries"
            )
        total = 0
        members = []
        for info in infos:
            _check_name(info.filename, self.describe())
            if stat.S_ISLNK(info.external_attr >> 16):
                raise ingest_error(IngestKind.UNSAFE_ARCHIVE, f"{self.describe()} contains a symbolic link")
            if info.is_dir():
                continue
            if info.file_size > self.limits.max_file_bytes:
                raise ingest_error(IngestKind.TOO_LARGE, f"{_label(info)} inflates beyond the per-file limit")
            if info.file_size > 1024 * 1024 and info.file_size > self.limits.max_zip_ratio * max(
                info.compress_size, 1
            ):
                raise ingest_error(
                    IngestKind.UNSAFE_ARCHIVE, f"{_label(info)} has an absurd compression ratio"
                )
            total += info.file_size
            members.append(info)
        if total > self.limits.max_total_bytes:
            raise ingest_error(
                IngestKind.TOO_LARGE, f"{self.describe()} inflates beyond the total size limit"
            )
        return members

    def _read_header(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Dataset | None:
        """Inflate only as far as the header goes (pydicom stops before the pixel data)."""
        try:
            with archive.open(info) as fp:
                if not has_dicom_magic(fp.read(DICM_OFFSET + 4)):
                    return None
                fp.seek(0)
                return read_dataset(fp, _label(info), headers_only=True)  # type: ignore[arg-type]
        except (zipfile.BadZipFile, EOFError) as exc:
            raise ingest_error(IngestKind.CORRUPT, f"{_label(info)} cannot be inflated") from exc
        except NotImplementedError as exc:
            raise ingest_error(
                IngestKind.NOT_DICOM, f"{_label(info)} uses an unsupported zip compression"
            ) from exc
        except RuntimeError as exc:  # encrypted member without password
            raise ingest_error(IngestKind.NOT_DICOM, f"{_label(info)} is encrypted") from exc

    def _read_member(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
        try:
            with archive.open(info) as fp:
                data = fp.read(info.file_size + 1)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ingest_error(IngestKind.CORRUPT, f"{_label(info)} cannot be inflated") from exc
        except NotImplementedError as exc:
            raise ingest_error(
                IngestKind.NOT_DICOM, f"{_label(info)} uses an unsupported zip compression"
            ) from exc
        except RuntimeError as exc:  # encrypted member without password
            raise ingest_error(IngestKind.NOT_DICOM, f"{_label(info)} is encrypted") from exc
        if len(data) > info.file_size:
            raise ingest_error(IngestKind.UNSAFE_ARCHIVE, f"{_label(info)} inflates beyond its declared size")
        return data


def _check_name(name: str, where: str) -> None:
    """Reject names that would escape an extraction folder, even though we never extract."""
    normalised = name.replace("\\", "/")
    parts = PurePosixPath(normalised).parts
    if (
        normalised.startswith("/")
        or (len(normalised) > 1 and normalised[1] == ":")
        or ".." in parts
        or "\x00" in name
    ):
        raise ingest_error(IngestKind.UNSAFE_ARCHIVE, f"{where} has a member path that escapes the archive")


def _skipped_name(name: str) -> bool:
    base = PurePosixPath(name.replace("\\", "/")).name
    return base == "DICOMDIR" or base.startswith(".") or name.startswith("__MACOSX/")


def _label(info: zipfile.ZipInfo) -> str:
    return f"archive member {file_label(info.filename).removeprefix('file ')}"
