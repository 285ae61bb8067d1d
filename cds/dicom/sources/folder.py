"""DICOM files in a folder tree (or one file): the embedded default image store.

Non-DICOM files are normal in exported folders (DICOMDIR, .DS_Store, Thumbs.db, README, JPEG
previews), so a folder skips anything without the Part 10 'DICM' marker. A single file given
directly must be DICOM. Symbolic links are not followed: a study folder must not read outside itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from cds.dicom.errors import IngestKind, ingest_error
from cds.dicom.limits import DEFAULT_LIMITS, IngestLimits
from cds.dicom.reader import DICM_OFFSET, file_label, has_dicom_magic, is_dicomdir, read_dataset
from cds.dicom.sources.base import InstanceRef

_SKIP_NAMES = frozenset({"DICOMDIR", "Thumbs.db", "desktop.ini"})


@dataclass(frozen=True)
class FolderSource:
    root: Path
    limits: IngestLimits = field(default=DEFAULT_LIMITS)

    def describe(self) -> str:
        return "study folder"  # never the path: exports name folders after patients

    def iter_headers(self) -> Iterator[tuple[InstanceRef, Dataset]]:
        if not self.root.exists():
            raise ingest_error(IngestKind.EMPTY, f"{self.describe()} does not exist")
        if self.root.is_file():
            yield from self._single_file()
            return
        files = self._candidate_files()
        if not files:
            raise ingest_error(IngestKind.EMPTY, f"{self.describe()} contains no files")
        found = 0
        for path in files:
            if not _looks_like_dicom(path):
                continue
            with path.open("rb") as fp:
                ds = read_dataset(fp, file_label(str(path)), headers_only=True)
            if is_dicomdir(ds):
                continue
            found += 1
            yield InstanceRef(str(path)), ds
        if not found:
            raise ingest_error(IngestKind.NOT_DICOM, f"none of the {len(files)} files is DICOM")

    def read_instances(self, refs: Sequence[InstanceRef]) -> Iterator[tuple[InstanceRef, Dataset]]:
        for ref in refs:
            path = Path(ref.key)
            with path.open("rb") as fp:
                yield ref, read_dataset(fp, file_label(str(path)), headers_only=False)

    def _single_file(self) -> Iterator[tuple[InstanceRef, Dataset]]:
        self._check_size(self.root.stat().st_size, file_label(str(self.root)))
        with self.root.open("rb") as fp:
            ds = read_dataset(fp, file_label(str(self.root)), headers_only=True)
        yield InstanceRef(str(self.root)), ds

    def _candidate_files(self) -> list[Path]:
        files: list[Path] = []
        total = 0
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if name.startswith(".") or name in _SKIP_NAMES or path.is_symlink():
                    continue
                size = path.stat().st_size
                self._check_size(size, file_label(str(path)))
                total += size
                files.append(path)
                if len(files) > self.limits.max_instances * 2:
                    raise ingest_error(IngestKind.TOO_LARGE, f"{self.describe()} holds too many files")
        if total > self.limits.max_total_bytes:
            raise ingest_error(IngestKind.TOO_LARGE, f"{self.describe()} holds more than the byte limit")
        return files

    def _check_size(self, size: int, label: str) -> None:
        if size > self.limits.max_file_bytes:
            raise ingest_error(
                IngestKind.TOO_LARGE, f"{label} is larger than {self.limits.max_file_bytes} bytes"
            )


def _looks_like_dicom(path: Path) -> bool:
    with path.open("rb") as fp:
        return has_dicom_magic(fp.read(DICM_OFFSET + 4))
