"""Helpers shared by the viewer tests: the analysed-study handle and small synthetic artifacts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
from flask import Flask

from cds.config import Settings
from cds.domain import AnalysisResult, AnalysisStatus, Condition, Finding, Grade, Level, MeasurementName, Side
from cds.viewer import artifacts as art


@dataclass(frozen=True)
class AnalysedStudy:
    settings: Settings
    app: Flask
    analysis_id: str
    study_uid: str
    patient_ref: str
    data_dir: Path


AP_LINE = ((31.0, 40.0), (49.0, 40.0))
RECESS = MeasurementName.LATERAL_RECESS_DEPTH_MM
RECESS_LINE = ((50.0, 50.0), (55.0, 50.0))


def synthetic_artifacts(data_dir: Path, analysis_id: str, level: Level = Level.L4_L5) -> art.Manifest:
    """A small, hand-made artifact set (a disc of 'sac' in a noisy square) for HTTP/unit tests."""
    rng = np.random.default_rng(3)
    sag_img = rng.uniform(0.0, 1.0, (64, 48)).astype(np.float32)
    sag_labels = np.zeros((64, 48), dtype=np.uint8)
    sag_labels[10:20, 5:20] = art.SAG_VERTEBRA
    sag_labels[20:24, 5:20] = art.SAG_DISC
    sag_labels[5:60, 24:30] = art.SAG_CANAL
    images = rng.uniform(0.0, 1.0, (2, 40, 40)).astype(np.float32)
    yy, xx = np.mgrid[:80, :80]
    sac = np.stack([(yy - 40) ** 2 + (xx - 40) ** 2 < r * r for r in (12, 9)])
    manifest = art.Manifest(
        sagittal=art.SagittalInfo(
            series_uid="1.2.3.1",
            slice_index=7,
            shape=(64, 48),
            pixel_mm=(1.0, 1.0),
            levels=(art.LevelMark(level, (22.0, 12.0)),),
            slice_lines=(art.SliceLine(level, (22.0, 4.0), (23.0, 40.0)),),
        ),
        axial={
            level: art.AxialInfo(
                level=level,
                series_uid="1.2.3.2",
                slice_indices=(3, 4),
                default_row=1,
                image_shape=(40, 40),
                image_pixel_mm=0.8,
                measurements=(
                    art.DrawnMeasurement(MeasurementName.DSCA_MM2, None, 61.8, 1),
                    art.DrawnMeasurement(MeasurementName.AP_DIAMETER_MM, None, 7.9, 1, AP_LINE),
                    art.DrawnMeasurement(RECESS, Side.LEFT, 2.5, 0, RECESS_LINE),
                ),
            )
        },
    )
    art.write_artifacts(
        art.viewer_dir(data_dir, analysis_id),
        manifest,
        art.SagittalPixels(sag_img, sag_labels),
        {level: art.AxialPixels(images, sac)},
    )
    return manifest


STUDY_UID = "1.2.826.0.1.3680043.8.498.4242"
PATIENT_REF = "Patient/p-viewer-1"


def complete_result() -> AnalysisResult:
    findings = (
        Finding(Level.L4_L5, Condition.SPINAL_CANAL, Grade.SEVERE, 0.97,
                {MeasurementName.DSCA_MM2: 61.8, MeasurementName.AP_DIAMETER_MM: 7.9}),
        Finding(Level.L4_L5, Condition.LEFT_SUBARTICULAR, Grade.MODERATE, 0.7,
                {MeasurementName.LATERAL_RECESS_DEPTH_MM: 2.5}),
        Finding(Level.L5_S1, Condition.LEFT_FORAMINAL, Grade.MODERATE, 0.64, {}, uncertain=True),
    )  # fmt: skip
    return AnalysisResult(
        AnalysisStatus.COMPLETE, findings, model_versions={"classifier": "classifier@1.0.0"}
    )


def store_analysis(
    app: Flask,
    result: AnalysisResult | None = None,
    study_uid: str = STUDY_UID,
    patient_ref: str = PATIENT_REF,
    study_date: date | None = date(2025, 3, 3),
) -> str:
    from cds.extensions import services
    from cds.store import queries

    with services(app).db.session() as session:
        queries.upsert_study(
            session, study_uid, patient_ref=patient_ref, study_date=study_date, description="MR LUMBAR SPINE"
        )
        return queries.save_analysis(session, study_uid, result or complete_result()).id


def viewer_path(app: Flask, analysis_id: str, ttl_s: int = 600) -> str:
    from cds.extensions import services
    from cds.signing import sign_viewer_token

    token = sign_viewer_token(analysis_id, ttl_s, secret_key=services(app).settings.secret_key)
    return f"/viewer/{token}"
