"""Every bad input gets an IngestError with its stable kind, and nothing else breaks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dicom_factory import SAG_IOP, SeriesSpec, lumbar_specs, make_instance, write_lumbar_study, write_series
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLSLossless, generate_uid

from cds.dicom import IngestKind, IngestLimits, load_study
from cds.errors import IngestError


def expect(kind: IngestKind, source: Path, **kw: object) -> IngestError:
    with pytest.raises(IngestError) as info:
        load_study(source, **kw)  # type: ignore[arg-type]
    assert info.value.kind == kind, info.value.message
    assert info.value.kind == kind.value  # the stable string callers switch on
    assert info.value.message
    return info.value


def sag_t2_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.glob("*.dcm")
        if dcmread(p, stop_before_pixels=True).SeriesDescription == "SAG T2 TSE"
    )


def test_good_study_loads(tmp_path: Path) -> None:
    study_uid, _ = write_lumbar_study(tmp_path)
    study = load_study(tmp_path)
    assert study.study_uid == study_uid and len(study.series) == 3


def test_empty_folder(tmp_path: Path) -> None:
    expect(IngestKind.EMPTY, tmp_path)


def test_not_dicom_folder_and_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "scan.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 300)
    expect(IngestKind.NOT_DICOM, tmp_path)
    expect(IngestKind.NOT_DICOM, tmp_path / "notes.txt")


def test_non_dicom_files_beside_a_study_are_ignored(tmp_path: Path) -> None:
    write_lumbar_study(tmp_path)
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + b"\x00" * 200)
    (tmp_path / "README.txt").write_text("exported by PACS")
    (tmp_path / "DICOMDIR").write_bytes(b"\x00" * 128 + b"DICM" + b"\x00" * 64)
    assert len(load_study(tmp_path).series) == 3


def test_truncated_in_pixel_data(tmp_path: Path) -> None:
    write_lumbar_study(tmp_path)
    victim = sag_t2_files(tmp_path)[4]
    victim.write_bytes(victim.read_bytes()[:-300])
    err = expect(IngestKind.TRUNCATED, tmp_path)
    assert "pixel" in err.message or "truncated" in err.message


def test_truncated_in_header(tmp_path: Path) -> None:
    write_lumbar_study(tmp_path)
    victim = sorted(tmp_path.glob("*.dcm"))[0]
    data = victim.read_bytes()
    cut = data.index(b"MRI LUMBAR SPINE") + 5  # inside the StudyDescription value
    victim.write_bytes(data[:cut])
    expect(IngestKind.TRUNCATED, tmp_path)


def test_missing_pixel_data(tmp_path: Path) -> None:
    write_lumbar_study(tmp_path)
    victim = sag_t2_files(tmp_path)[2]
    ds = dcmread(victim)
    del ds.PixelData
    ds.save_as(victim, enforce_file_format=True)
    expect(IngestKind.MISSING_PIXEL_DATA, tmp_path)


def test_compressed_syntax_without_decoder_names_the_syntax(tmp_path: Path) -> None:
    write_lumbar_study(tmp_path)
    for path in sag_t2_files(tmp_path):
        ds = dcmread(path)
        ds.file_meta.TransferSyntaxUID = JPEGLSLossless
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + b"\x00" * 64])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.save_as(path, enforce_file_format=True)
    err = expect(IngestKind.UNSUPPORTED_TRANSFER_SYNTAX, tmp_path)
    assert "JPEG-LS Lossless" in err.message and str(JPEGLSLossless) in err.message


def test_mixed_studies_and_picking_one(tmp_path: Path) -> None:
    first, _ = write_lumbar_study(tmp_path / "a")
    write_lumbar_study(tmp_path / "b")
    err = expect(IngestKind.MIXED_STUDIES, tmp_path)
    assert "2 studies" in err.message
    assert load_study(tmp_path, study_uid=first).study_uid == first
    expect(IngestKind.STUDY_NOT_FOUND, tmp_path, study_uid="1.2.3.4")


def test_single_slice_file_and_single_slice_sagittal(tmp_path: Path) -> None:
    spec = lumbar_specs()["sag_t2"]
    (one,) = write_series(tmp_path / "one", SeriesSpec("SAG T2", SAG_IOP, (0, 0, 0), 1), generate_uid())
    expect(IngestKind.SINGLE_SLICE, one)
    expect(IngestKind.SINGLE_SLICE, tmp_path / "one")
    study_uid = generate_uid()
    spec.n_slices = 1
    write_series(tmp_path / "study", spec, study_uid)
    write_series(tmp_path / "study", lumbar_specs()["ax_t2"], study_uid)
    expect(IngestKind.SINGLE_SLICE, tmp_path / "study")


def test_no_sagittal_t2(tmp_path: Path) -> None:
    specs = lumbar_specs()
    study_uid = generate_uid()
    write_series(tmp_path, specs["sag_t1"], study_uid)
    write_series(tmp_path, specs["ax_t2"], study_uid)
    err = expect(IngestKind.NO_SAGITTAL_T2, tmp_path)
    assert "sagittal" in err.message


@pytest.mark.parametrize(
    ("body_part", "description", "ok"),
    [
        ("HEAD", "MRI BRAIN W/O", False),
        ("", "MR KNIE LINKS", False),
        ("CSPINE", "MRI SPINE", False),
        ("KNEE", "MRI LUMBAR SPINE", True),  # conflicting words: not clearly non-lumbar
        ("", "", True),  # empty body part and no description: real studies look like this
        ("", "MRT LWS nativ", True),
        ("SPINE", "MR SPINE", True),
        ("LSPINE", "", True),
    ],
)
def test_non_lumbar_spine_study(tmp_path: Path, body_part: str, description: str, ok: bool) -> None:
    write_lumbar_study(tmp_path, body_part=body_part, study_description=description)
    if ok:
        assert load_study(tmp_path).sagittal_t2 is not None
    else:
        expect(IngestKind.NOT_LUMBAR_SPINE, tmp_path)


def test_inconsistent_spacing(tmp_path: Path) -> None:
    study_uid = generate_uid()
    spec = lumbar_specs()["sag_t2"]
    for f, x in enumerate([0.0, 4.0, 8.0, 13.0, 17.0, 20.0, 24.0]):
        ds = make_instance(spec, f, study_uid)
        ds.ImagePositionPatient = [-x, -60.0, 80.0]
        ds.save_as(tmp_path / f"s{f}.dcm", enforce_file_format=True)
    err = expect(IngestKind.INCONSISTENT_SPACING, tmp_path)
    assert "irregular" in err.message


def test_missing_orientation_is_bad_geometry(tmp_path: Path) -> None:
    write_lumbar_study(tmp_path)
    for path in sag_t2_files(tmp_path):
        ds = dcmread(path)
        del ds.ImageOrientationPatient
        ds.save_as(path, enforce_file_format=True)
    expect(IngestKind.BAD_GEOMETRY, tmp_path)


def test_absurd_matrix_rejected_before_decoding(tmp_path: Path) -> None:
    write_lumbar_study(tmp_path)
    for path in sag_t2_files(tmp_path):
        ds = dcmread(path)
        ds.Rows, ds.Columns = 60000, 60000  # 3.6 G pixels per frame; the bytes are not even there
        ds.save_as(path, enforce_file_format=True)
    err = expect(IngestKind.TOO_LARGE, tmp_path)
    assert "60000x60000" in err.message


def test_frame_and_volume_limits(tmp_path: Path) -> None:
    write_lumbar_study(tmp_path)
    expect(IngestKind.TOO_LARGE, tmp_path, limits=IngestLimits(max_series_voxels=5_000))
    expect(IngestKind.TOO_LARGE, tmp_path, limits=IngestLimits(max_instances=10))
    expect(IngestKind.TOO_LARGE, tmp_path, limits=IngestLimits(max_file_bytes=1_000))


def test_multiframe_and_colour_are_unsupported_images(tmp_path: Path) -> None:
    write_lumbar_study(tmp_path)
    for path in sag_t2_files(tmp_path):
        ds = dcmread(path)
        ds.NumberOfFrames = 3
        ds.save_as(path, enforce_file_format=True)
    expect(IngestKind.UNSUPPORTED_IMAGE, tmp_path)


def test_non_ascii_tags_are_decoded_not_fatal(tmp_path: Path) -> None:
    write_lumbar_study(tmp_path)
    paths = sorted(tmp_path.glob("*.dcm"))
    for n, path in enumerate(paths):
        ds = dcmread(path)
        if n % 2:  # declared UTF-8 (ISO_IR 192) and really UTF-8
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.PatientName = "Müller^Jürgen"
            ds.PatientID = "PÄT-1"
        else:  # declared UTF-8 but written as latin-1 bytes: a common real-world mistake
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds["PatientName"] = DataElement(0x00100010, "PN", "Müller^Jürgen".encode("latin-1"))
            ds["PatientID"] = DataElement(0x00100020, "LO", "PÄT-1".encode("latin-1"))
        ds.StudyDescription = "MRT Lendenwirbelsäule"
        ds.save_as(path, enforce_file_format=True)
    study = load_study(tmp_path)
    assert study.description == "MRT Lendenwirbelsäule"
    assert study.patient_id in {"PÄT-1", "P\ufffdT-1"}


def test_latin1_character_set(tmp_path: Path) -> None:
    write_lumbar_study(tmp_path)
    for path in tmp_path.glob("*.dcm"):
        ds = dcmread(path)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientID = "ÅSE-7"
        ds.save_as(path, enforce_file_format=True)
    raw = sorted(tmp_path.glob("*.dcm"))[0].read_bytes()
    assert "ÅSE-7".encode("latin-1") in raw
    assert load_study(tmp_path).patient_id == "ÅSE-7"


def test_rescale_slope_and_intercept_applied(tmp_path: Path) -> None:
    study_uid = generate_uid()
    specs = lumbar_specs()
    specs["sag_t2"].extra = {"RescaleSlope": 2.5, "RescaleIntercept": -10}
    for spec in specs.values():
        write_series(tmp_path, spec, study_uid)
    sag = load_study(tmp_path).sagittal_t2
    assert sag.array.dtype == np.float32
    np.testing.assert_allclose(sag.array[:, 0, 0], 2.5 * 100.0 * np.arange(1, 12) - 10)


def test_enhanced_multiframe_without_top_level_geometry(tmp_path: Path) -> None:
    write_lumbar_study(tmp_path)
    for path in sag_t2_files(tmp_path):
        ds = dcmread(path)
        del ds.ImageOrientationPatient, ds.ImagePositionPatient
        ds.NumberOfFrames = 11
        ds.save_as(path, enforce_file_format=True)
    err = expect(IngestKind.UNSUPPORTED_IMAGE, tmp_path)
    assert "multi-frame" in err.message


def test_messages_never_name_patient_folders_or_files(tmp_path: Path) -> None:
    folder = tmp_path / "DOE^JOHN_1961"
    write_lumbar_study(folder)
    victim = sag_t2_files(folder)[0]
    named = victim.with_name("DOE_JOHN_IM0001.dcm")
    victim.rename(named)
    named.write_bytes(named.read_bytes()[:-300])
    err = expect(IngestKind.TRUNCATED, folder)
    assert "DOE" not in err.message and "JOHN" not in err.message
    (tmp_path / "empty^PATIENT").mkdir()
    assert "PATIENT" not in expect(IngestKind.EMPTY, tmp_path / "empty^PATIENT").message
