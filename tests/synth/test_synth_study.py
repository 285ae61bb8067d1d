"""A generated study: files present, DICOM readable with consistent geometry, truth consistent with the
FINDINGS.md rule, deterministic from its seed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from cds.domain import Condition, Grade, Level, MeasurementName, grade_from_measurement
from cds.synth.study import StudyOptions, generate_study


def _series(root: Path) -> dict[str, list[pydicom.Dataset]]:
    out: dict[str, list[pydicom.Dataset]] = {}
    for p in sorted((root / "dicom").glob("*.dcm")):
        ds = pydicom.dcmread(p)
        out.setdefault(ds.SeriesInstanceUID, []).append(ds)
    for dss in out.values():
        dss.sort(key=lambda d: int(d.InstanceNumber))
    return out


def _table(root: Path) -> dict[str, Any]:
    return json.loads((root / "truth" / "labels.json").read_text())


def _affine_from_tags(dss: list[pydicom.Dataset]) -> np.ndarray:
    """(k, i, j, 1) -> LPS from the tags alone (the way a DICOM reader must do it)."""
    first = dss[0]
    row = np.array(first.ImageOrientationPatient[:3], float)
    col = np.array(first.ImageOrientationPatient[3:], float)
    dr, dc = (float(x) for x in first.PixelSpacing)
    m = np.eye(4)
    m[:3, 0] = (
        np.array(dss[-1].ImagePositionPatient, float) - np.array(first.ImagePositionPatient, float)
    ) / max(len(dss) - 1, 1)
    m[:3, 1] = col * dr
    m[:3, 2] = row * dc
    m[:3, 3] = np.array(first.ImagePositionPatient, float)
    return m


def test_dicom_is_readable_and_clearly_synthetic(small_study: Path) -> None:
    series = _series(small_study)
    assert len(series) == 7  # sagittal T2, sagittal T1, five axial T2 stacks
    study_uids = {d.StudyInstanceUID for dss in series.values() for d in dss}
    frames = {d.FrameOfReferenceUID for dss in series.values() for d in dss}
    assert len(study_uids) == 1 and len(frames) == 1
    for dss in series.values():
        for ds in dss:
            assert ds.Modality == "MR" and ds.BodyPartExamined == "LSPINE"
            assert str(ds.PatientName).startswith("SYNTHETIC^") and ds.PatientID.startswith("SYN-")
            assert ds.pixel_array.dtype == np.uint16 and ds.pixel_array.shape == (ds.Rows, ds.Columns)
            assert float(ds.WindowWidth) > 0 and float(ds.EchoTime) > 0 and float(ds.RepetitionTime) > 0
            assert float(ds.MagneticFieldStrength) in (1.5, 3.0)
    descriptions = {dss[0].SeriesDescription for dss in series.values()}
    assert any("sag" in d.lower() for d in descriptions)


def test_geometry_tags_round_trip_voxel_to_patient(small_study: Path) -> None:
    series, table = _series(small_study), _table(small_study)
    for uid, dss in series.items():
        truth = table["series"][uid]
        affine = _affine_from_tags(dss)
        np.testing.assert_allclose(affine, np.array(truth["affine"]), atol=1e-3)
        # slices are evenly spaced along the orientation normal by SpacingBetweenSlices
        row = np.array(dss[0].ImageOrientationPatient[:3], float)
        col = np.array(dss[0].ImageOrientationPatient[3:], float)
        normal = np.cross(row, col)
        pos = np.array([np.array(d.ImagePositionPatient, float) @ normal for d in dss])
        np.testing.assert_allclose(np.diff(pos), float(dss[0].SpacingBetweenSlices), atol=1e-3)
        # voxel -> patient -> voxel
        rng = np.random.default_rng(0)
        vox = np.c_[
            rng.integers(0, len(dss), 20),
            rng.integers(0, dss[0].Rows, 20),
            rng.integers(0, dss[0].Columns, 20),
        ]
        pts = (affine @ np.c_[vox, np.ones(20)].T).T
        back = (np.linalg.inv(affine) @ pts.T).T[:, :3]
        np.testing.assert_allclose(back, vox, atol=1e-6)


def test_sagittal_and_axial_labels_agree_in_patient_space(small_study: Path) -> None:
    """Sagittal disc voxels, mapped through the tags into each axial stack, land on the same disc there."""
    series, table = _series(small_study), _table(small_study)
    value = {v: int(k) for k, v in table["labels"].items()}
    sag_uid = next(u for u, s in table["series"].items() if s["kind"] == "sagittal_t2")
    sag_aff = _affine_from_tags(series[sag_uid])
    sag_lab = np.load(small_study / "truth" / table["series"][sag_uid]["file"])["labels"]
    for uid, info in table["series"].items():
        if info["kind"] != "axial_t2":
            continue
        disc = value[f"disc_{info['level']}"]
        vox = np.argwhere(sag_lab == disc)
        pts = (sag_aff @ np.c_[vox, np.ones(len(vox))].T).T
        ax_aff = _affine_from_tags(series[uid])
        idx = np.rint((np.linalg.inv(ax_aff) @ pts.T).T[:, :3]).astype(int)
        ax_lab = np.load(small_study / "truth" / info["file"])["labels"]
        ok = np.all((idx >= 0) & (idx < np.array(ax_lab.shape)), axis=1)
        assert ok.sum() > 20, info["level"]
        hits = ax_lab[tuple(idx[ok].T)]
        assert np.mean(hits == disc) > 0.6, info["level"]


def test_truth_files_present_and_grades_follow_the_rule(small_study: Path) -> None:
    findings = json.loads((small_study / "truth" / "findings.json").read_text())
    table = _table(small_study)
    assert set(findings["levels"]) == {lv.value for lv in Level}
    assert findings["seed"] == 5 and findings["generator_version"] and findings["study_uid"]
    assert "drivers" in findings["params"]["anatomy"]
    for lv, conds in findings["levels"].items():
        assert set(conds) == {c.value for c in Condition}
        for cond, f in conds.items():
            c = Condition(cond)
            assert set(f) == {"grade", "measurement"}
            assert f["measurement"]["name"] == c.deciding_measurement.value
            assert Grade(f["grade"]) is grade_from_measurement(c, f["measurement"]["value"])
            key = f"{lv}_{cond}"
            if Grade(f["grade"]).present:
                entry = table["causes"][key]
                mask = np.load(small_study / "truth" / entry["file"])["mask"]
                assert mask.shape == tuple(table["series"][entry["series_uid"]]["shape"])
            else:
                assert key not in table["causes"]
        extra = findings["measurements"][lv]
        assert (
            extra[MeasurementName.DISC_HEIGHT_MM.value] > 0
            and extra[MeasurementName.AP_DIAMETER_MM.value] >= 0
        )
    for uid, info in table["series"].items():
        lab = np.load(small_study / "truth" / info["file"])["labels"]
        assert lab.shape == tuple(info["shape"]) and lab.dtype == np.uint8
        assert set(np.unique(lab)) <= {int(k) for k in table["labels"]}, uid
    for group in ("vertebra", "disc", "canal"):
        assert table["groups"][group]


def test_same_seed_gives_byte_identical_files(
    small_study: Path, small_options: StudyOptions, tmp_path: Path
) -> None:
    again = generate_study(5, tmp_path, small_options)
    first = sorted(p.relative_to(small_study) for p in small_study.rglob("*") if p.is_file())
    second = sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert first == second
    for rel in first:
        assert (small_study / rel).read_bytes() == (again / rel).read_bytes(), rel


@pytest.mark.parametrize("seed", [6])
def test_other_seed_differs(
    small_study: Path, small_options: StudyOptions, tmp_path: Path, seed: int
) -> None:
    other = generate_study(seed, tmp_path, small_options)
    a = json.loads((small_study / "truth" / "findings.json").read_text())
    b = json.loads((other / "truth" / "findings.json").read_text())
    assert a["study_uid"] != b["study_uid"] and a["levels"] != b["levels"]
