"""Series grouping and selection: geometry first, descriptions second, timings as fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dicom_factory import (
    AX_IOP,
    COR_IOP,
    SAG_IOP,
    SeriesSpec,
    make_instance,
    rotated_iop,
    rotation_x,
    write_series,
)
from pydicom.uid import generate_uid

from cds.dicom import SeriesKind, load_study
from cds.dicom.headers import InstanceHeader, header_from_dataset
from cds.dicom.selection import Weighting, kind_of, weighting_of
from cds.dicom.series import group_stacks
from cds.dicom.sources.base import InstanceRef


def sag(description: str, te: float | None = 100.0, tr: float | None = 3000.0) -> SeriesSpec:
    return SeriesSpec(description, SAG_IOP, (-20.0, -60.0, 80.0), 9, 4.0, echo_time=te, repetition_time=tr)


def axial(description: str, tilt: float = 0.0, origin_z: float = 0.0, n: int = 5) -> SeriesSpec:
    return SeriesSpec(description, rotated_iop(AX_IOP, rotation_x(tilt)), (-16.0, -16.0, origin_z), n, 4.0)


def write(tmp_path: Path, *specs: SeriesSpec) -> str:
    study_uid = generate_uid()
    for spec in specs:
        write_series(tmp_path, spec, study_uid)
    return study_uid


def header(spec: SeriesSpec, **tags: object) -> InstanceHeader:
    ds = make_instance(spec, 0, generate_uid())
    for k, v in tags.items():
        setattr(ds, k, v)
    return header_from_dataset(ds, InstanceRef("x"))


def test_geometry_beats_description(tmp_path: Path) -> None:
    # called "SAG T2" but acquired axially; the real sagittal T2 is only called "T2 TSE"
    mislabelled = axial("SAG T2")
    real = sag("T2 TSE")
    write(tmp_path, mislabelled, real)
    study = load_study(tmp_path)
    assert study.sagittal_t2.series_uid == real.series_uid
    assert [v.series_uid for v in study.axial_t2] == [mislabelled.series_uid]


def test_timings_decide_when_descriptions_are_silent(tmp_path: Path) -> None:
    t2 = sag("series 4", te=110.0, tr=4000.0)
    t1 = sag("series 3", te=11.0, tr=600.0)
    write(tmp_path, t1, t2)
    study = load_study(tmp_path)
    assert study.sagittal_t2.series_uid == t2.series_uid
    assert study.sagittal_t1 is not None and study.sagittal_t1.series_uid == t1.series_uid


@pytest.mark.parametrize(
    ("description", "tags", "expected"),
    [
        ("t2_tse_sag_384", {}, Weighting.T2),
        ("SAG T1 FSE", {}, Weighting.T1),
        ("SAG STIR", {}, Weighting.OTHER),
        ("T2* MEDIC", {}, Weighting.OTHER),
        ("3-plane loc", {}, Weighting.OTHER),
        ("T2 SAG", {"ImageType": ["DERIVED", "PRIMARY", "MPR"]}, Weighting.OTHER),
        ("", {"InversionTime": 150.0}, Weighting.OTHER),
        ("", {}, Weighting.T2),  # TE 100 / TR 3000 from the spec
    ],
)
def test_weighting_rules(description: str, tags: dict[str, object], expected: Weighting) -> None:
    assert weighting_of(header(sag(description), **tags)) is expected


def test_stir_and_coronal_t2_are_not_the_sagittal_t2(tmp_path: Path) -> None:
    stir = sag("SAG STIR", te=70.0, tr=3500.0)
    coronal = SeriesSpec("COR T2", COR_IOP, (-16.0, -40.0, 20.0), 6, 4.0)
    t2 = sag("SAG T2")
    write(tmp_path, stir, coronal, t2)
    study = load_study(tmp_path)
    assert study.sagittal_t2.series_uid == t2.series_uid
    kinds = {info.series_uid: info.kind for info in study.found}
    assert kinds[stir.series_uid] is SeriesKind.OTHER and kinds[coronal.series_uid] is SeriesKind.OTHER


def test_prefers_non_fat_suppressed_sagittal_t2(tmp_path: Path) -> None:
    fs = sag("SAG T2 FS")
    plain = sag("SAG T2")
    write(tmp_path, fs, plain)
    assert load_study(tmp_path).sagittal_t2.series_uid == plain.series_uid


def test_axial_series_with_angled_blocks_splits_into_one_volume_per_block(tmp_path: Path) -> None:
    study_uid = write(tmp_path, sag("SAG T2"))
    series_uid = generate_uid()
    blocks = [(-25.0, 40.0), (-10.0, 0.0), (5.0, -40.0)]  # (tilt, centre z) per disc, cranial first
    for b, (tilt, z) in enumerate(blocks):
        spec = axial("AX T2 blocks", tilt=tilt, origin_z=z, n=3)
        spec.series_uid = series_uid
        for t in range(3):
            make_instance(spec, t, study_uid).save_as(
                tmp_path / f"block{b}_{t}.dcm", enforce_file_format=True
            )
    study = load_study(tmp_path)
    assert len(study.axial_t2) == 3
    assert {v.series_uid for v in study.axial_t2} == {series_uid}
    assert sorted(v.part for v in study.axial_t2) == [1, 2, 3]
    tilts = [np.degrees(np.arccos(v.normal[2])) for v in study.axial_t2]
    np.testing.assert_allclose(tilts, [25.0, 10.0, 5.0], atol=1e-3)  # ordered head to feet


def test_same_orientation_blocks_separated_by_gaps_are_split(tmp_path: Path) -> None:
    study_uid = write(tmp_path, sag("SAG T2"))
    spec = axial("AX T2", n=1)
    for f, z in enumerate([0.0, 4.0, 8.0, 40.0, 44.0, 48.0]):
        ds = make_instance(spec, 0, study_uid)
        ds.ImagePositionPatient = [-16.0, -16.0, z]
        ds.save_as(tmp_path / f"gap_{f}.dcm", enforce_file_format=True)
    study = load_study(tmp_path)
    assert [v.shape[0] for v in study.axial_t2] == [3, 3]
    assert all(v.spacing_mm[0] == pytest.approx(4.0) for v in study.axial_t2)


def test_multi_echo_series_splits_by_echo_time() -> None:
    study_uid = generate_uid()
    spec = sag("SAG PD/T2")
    headers = []
    for te in (30.0, 100.0):
        for t in range(spec.n_slices):
            ds = make_instance(spec, t, study_uid)
            ds.EchoTime = te
            headers.append(header_from_dataset(ds, InstanceRef(f"{te}-{t}")))
    stacks = group_stacks(headers)
    assert len(stacks) == 2 and all(s.problem is None and s.n_slices == 9 for s in stacks)
    assert sorted(s.first.echo_time or 0 for s in stacks) == [30.0, 100.0]


@pytest.mark.parametrize(
    ("description", "tilt", "expected"),
    [
        ("t2_tse_tra", 55.0, SeriesKind.AXIAL_T2),  # steep L5-S1 block: normal nearer A-P than head-feet
        ("AX T2 L5-S1", -50.0, SeriesKind.AXIAL_T2),
        ("COR T2", 55.0, SeriesKind.OTHER),  # the words say coronal: geometry alone stays coronal
        ("T2 TSE", 55.0, SeriesKind.OTHER),  # no hint: not guessed
        ("t2_tse_tra", 80.0, SeriesKind.OTHER),  # beyond any plausible disc angle: a coronal
    ],
)
def test_steep_axial_blocks_need_words_to_confirm(
    description: str, tilt: float, expected: SeriesKind
) -> None:
    spec = axial(description, tilt=tilt)
    headers = [header_from_dataset(make_instance(spec, t, "1.2.3"), InstanceRef(str(t))) for t in range(5)]
    (stack,) = group_stacks(headers)
    assert kind_of(stack) is expected
