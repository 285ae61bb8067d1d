"""The analysis job's viewer artifacts, from a real analysis of a generated study (real pipeline)."""

from __future__ import annotations

import numpy as np
from viewer_support import AnalysedStudy

from cds.domain import AnalysisResult, AnalysisStatus, MeasurementName
from cds.store import queries
from cds.viewer import artifacts as art
from cds.viewer.capture import recorder_for
from cds.viewer.page import format_measurement


def _result(study: AnalysedStudy) -> AnalysisResult:
    from cds.extensions import services

    with services(study.app).db.session(readonly=True) as s:
        record = queries.get_analysis(s, study.analysis_id)
        assert record is not None
        return record.to_result()


def test_job_writes_manifest_slices_and_masks(analysed_study: AnalysedStudy) -> None:
    directory = art.viewer_dir(analysed_study.data_dir, analysed_study.analysis_id)
    manifest = art.read_manifest(directory)
    result = _result(analysed_study)
    assert manifest.sagittal is not None
    sag = art.read_sagittal(directory)
    assert sag.image.shape == manifest.sagittal.shape == sag.labels.shape
    assert {art.SAG_DISC, art.SAG_VERTEBRA, art.SAG_CANAL} <= set(np.unique(sag.labels).tolist())
    assert manifest.sagittal.levels, "no level labels recorded"
    analysed_levels = {f.level for f in result.findings}
    assert set(manifest.axial) == analysed_levels
    for level, info in manifest.axial.items():
        px = art.read_axial(directory, level)
        n = len(info.slice_indices)
        assert px.images.shape == (n, *info.image_shape)
        assert px.sac.shape == (n, 2 * info.image_shape[0], 2 * info.image_shape[1])
        assert 0 <= info.default_row < n


def test_drawn_measurements_are_the_stored_values(analysed_study: AnalysedStudy) -> None:
    directory = art.viewer_dir(analysed_study.data_dir, analysed_study.analysis_id)
    manifest = art.read_manifest(directory)
    result = _result(analysed_study)
    drawn = 0
    for level, info in manifest.axial.items():
        px = art.read_axial(directory, level)
        stored = {(m, f.condition.side) for f in result.findings if f.level is level for m in f.measurements}
        for m in info.measurements:
            drawn += 1
            assert (m.name, m.side) in stored
            values = [
                f.measurements[m.name]
                for f in result.findings
                if f.level is level and m.name in f.measurements and f.condition.side == m.side
            ]
            assert any(abs(v - m.value) < 1e-3 for v in values)
            # Printed the same way in the picture's label and in the table (no rounding drift).
            assert any(format_measurement(m.name, v) == format_measurement(m.name, m.value) for v in values)
            h, w = px.sac.shape[1:]
            for r, c in m.points:
                assert -1 <= r <= h and -1 <= c <= w
            if m.name is MeasurementName.DSCA_MM2:
                # The yellow outline is the area: its pixel count on the 0.4 mm grid is the DSCA.
                area = float(px.sac[m.row].sum()) * 0.4 * 0.4
                assert abs(area - m.value) <= 0.1 * m.value + 2.0
                assert info.default_row == m.row
    assert drawn > 0, "no measurement of the findings was drawable"


def test_stand_in_quick_read_gets_no_recorder() -> None:
    def quick_read(study: object) -> AnalysisResult:
        return AnalysisResult(AnalysisStatus.COMPLETE)

    assert recorder_for(quick_read) is None
