"""Zip archives: studies load from memory; traversal, links and bombs are refused before inflating."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest
from dicom_factory import write_lumbar_study

from cds.dicom import IngestKind, IngestLimits, ZipSource, load_study
from cds.errors import IngestError


def zip_study(tmp_path: Path) -> tuple[Path, str]:
    folder = tmp_path / "study"
    study_uid, _ = write_lumbar_study(folder)
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.glob("*.dcm")):
            zf.write(path, f"EXPORT/SERIES/{path.name}")
        zf.writestr("__MACOSX/EXPORT/._junk", b"\x00\x05\x16\x07" + b"\x00" * 200)
        zf.writestr("EXPORT/README.txt", "exported")
    return archive, study_uid


def add_member(archive: Path, info: zipfile.ZipInfo | str, data: bytes) -> None:
    with zipfile.ZipFile(archive, "a", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(info, data)


def expect(kind: IngestKind, archive: Path, limits: IngestLimits | None = None) -> None:
    with pytest.raises(IngestError) as info:
        load_study(archive, limits=limits or IngestLimits())
    assert info.value.kind == kind, info.value.message


def test_study_loads_from_zip_without_extracting(tmp_path: Path) -> None:
    archive, study_uid = zip_study(tmp_path)
    before = set(tmp_path.rglob("*"))
    study = load_study(archive)
    assert study.study_uid == study_uid and len(study.series) == 3
    assert set(tmp_path.rglob("*")) == before  # nothing written next to the archive


@pytest.mark.parametrize(
    "name", ["../evil.dcm", "/etc/evil.dcm", "C:/evil.dcm", "a/../../evil.dcm", "..\\evil.dcm"]
)
def test_path_traversal_names_are_refused(tmp_path: Path, name: str) -> None:
    archive, _ = zip_study(tmp_path)
    add_member(archive, zipfile.ZipInfo(name), b"x")
    expect(IngestKind.UNSAFE_ARCHIVE, archive)


def test_symlink_member_is_refused(tmp_path: Path) -> None:
    archive, _ = zip_study(tmp_path)
    info = zipfile.ZipInfo("EXPORT/link.dcm")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    add_member(archive, info, b"/etc/passwd")
    expect(IngestKind.UNSAFE_ARCHIVE, archive)


def test_compression_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    archive, _ = zip_study(tmp_path)
    add_member(archive, "EXPORT/bomb.dcm", b"\x00" * (40 * 1024 * 1024))  # ~1000:1
    expect(IngestKind.UNSAFE_ARCHIVE, archive)


def test_size_and_entry_limits(tmp_path: Path) -> None:
    archive, _ = zip_study(tmp_path)
    expect(IngestKind.TOO_LARGE, archive, IngestLimits(max_zip_entries=5))
    expect(IngestKind.TOO_LARGE, archive, IngestLimits(max_total_bytes=10_000))
    expect(IngestKind.TOO_LARGE, archive, IngestLimits(max_file_bytes=1_000))


def test_zip_without_dicom_and_broken_zip(tmp_path: Path) -> None:
    archive = tmp_path / "docs.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.txt", "hello")
    expect(IngestKind.NOT_DICOM, archive)
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04" + b"\x00" * 50)
    with pytest.raises(IngestError) as info:
        list(ZipSource(broken).iter_headers())
    assert info.value.kind == IngestKind.NOT_DICOM
