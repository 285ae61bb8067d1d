"""quick_read composition: real geometry, level labelling, slice mapping, measurement and grading;
the model-backed steps (segmentation, classification, model loading) are faked at their boundary."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cds.dicom.selection import SeriesKind
from cds.dicom.study import Study
from cds.dicom.volume import Volume
from cds.domain import AnalysisStatus, Condition, Grade, Level, MeasurementName, Side
from cds.errors import ModelError, StageError
from cds.pipeline import axial as ax
from cds.pipeline import quick_read as qr
from cds.pipeline.classify import LevelProbabilities
from cds.pipeline.grade import SeverityEstimate
from cds.pipeline.segment import SagittalMasks
from cds.pipeline.subarticular import SubarticularReading, depth_measurement

DISC_ROWS = (20, 50, 80, 110, 140)  # sagittal rows of the five disc centres (1 mm pixels, z = 200 - row)
Z0 = 200.0


def sagittal_volume() -> Volume:
    a = np.eye(4)
    a[:3, 0] = (3.0, 0.0, 0.0)  # slices toward patient left
    a[:3, 1] = (0.0, 0.0, -1.0)  # rows toward the feet
    a[:3, 2] = (0.0, 1.0, 0.0)  # columns toward posterior
    a[:3, 3] = (-9.0, -40.0, Z0)
    return Volume(
        np.zeros((7, 170, 120), np.float32), a, (3.0, 1.0, 1.0), "1.2.3.1", "SAG T2", SeriesKind.SAGITTAL_T2
    )


def sagittal_masks(shape: tuple[int, int, int]) -> SagittalMasks:
    disc = np.zeros(shape, bool)
    for r in DISC_ROWS:
        disc[:, r - 4 : r + 5, 10:50] = True  # 9 mm tall, 40 mm deep
    canal = np.zeros(shape, bool)
    canal[2:5, :, 60:75] = True
    vertebra = np.zeros(shape, bool)
    return SagittalMasks(disc=disc, vertebra=vertebra, canal=canal)


def axial_volume(z_centre: float, n: int = 5) -> Volume:
    a = np.eye(4)
    a[:3, 0] = (0.0, 0.0, 2.0)  # slices toward the head
    a[:3, 1] = (0.0, 0.5, 0.0)  # rows toward posterior
    a[:3, 2] = (0.5, 0.0, 0.0)  # columns toward patient left
    a[:3, 3] = (-40.0, -30.0, z_centre - (n - 1))
    return Volume(
        np.zeros((n, 160, 160), np.float32), a, (2.0, 0.5, 0.5), "1.2.3.2", "AX T2", SeriesKind.AXIAL_T2
    )


def fake_axial_seg(
    volume: Volume, indices: tuple[int, ...], sac_semi_mm: tuple[float, float]
) -> ax.AxialSegmentation:
    """Canonical label maps with a sac ellipse of known area behind a disc, facets on both sides."""
    size = ax.CANONICAL_SIZE * ax.MEASURE_UPSAMPLE
    sp = ax.CANONICAL_SPACING_MM / ax.MEASURE_UPSAMPLE
    rows, cols = np.indices((size, size)) * sp
    cr, cc = size * sp / 2, size * sp / 2
    labels = np.zeros((len(indices), size, size), np.uint8)
    for i in range(len(indices)):
        lab = labels[i]
        lab[((rows - cr) / sac_semi_mm[0]) ** 2 + ((cols - cc) / sac_semi_mm[1]) ** 2 <= 1] = ax.SAC
        lab[(rows > cr - 30) & (rows < cr - 10) & (abs(cols - cc) < 20)] = ax.DISC
        # facets 4 mm behind the disc's posterior margin (row cr - 10), lateral to the sac
        lab[(rows >= cr - 6) & (rows < cr + 10) & (cols > cc + 12) & (cols < cc + 20)] = ax.FACET
        lab[(rows >= cr - 6) & (rows < cr + 10) & (cols < cc - 12) & (cols > cc - 20)] = ax.FACET
        # pedicles just behind the disc margin, their medial walls 21 mm from the midline
        lab[(rows >= cr - 12) & (rows < cr - 2) & (abs(cols - cc) >= 21) & (abs(cols - cc) < 26)] = (
            ax.POSTERIOR
        )
    probs = np.zeros((len(indices), len(ax.AXIAL_CLASSES), ax.CANONICAL_SIZE, ax.CANONICAL_SIZE), np.float32)
    frame = ax.canonical_frame(volume.affine, volume.shape[1:])
    return ax.AxialSegmentation(
        images=np.zeros((len(indices), ax.CANONICAL_SIZE, ax.CANONICAL_SIZE), np.float32),
        probs=probs,
        labels=labels,
        slice_indices=tuple(indices),
        frames=tuple(frame for _ in indices),
    )


SEVERE = SeverityEstimate(p_present=0.97, p_severe=0.9)
NORMAL = SeverityEstimate(p_present=0.05, p_severe=0.01)


def stages(**overrides: object) -> qr.Stages:
    def classify(segs: dict[Level, ax.AxialSegmentation], _m: Path | None) -> list[LevelProbabilities]:
        return [LevelProbabilities(lv, dict.fromkeys(Condition, SEVERE)) for lv in segs]

    base = qr.Stages(
        load_models=lambda _m: {
            "sagittal_seg": "sagittal_seg@1",
            "axial_seg": "axial_seg@1",
            "classifier": "c@1",
        },
        segment_sagittal=lambda v, _m: sagittal_masks(v.shape),
        label_levels=qr._label_levels,  # real (pure NumPy)
        assign_axial=qr._assign_axial,  # real (cds.dicom.levels)
        segment_axial=lambda v, idx, _m: fake_axial_seg(v, tuple(idx), (4.0, 5.0)),
        classify=classify,
    )
    return replace(base, **overrides)


def study(*volumes: Volume) -> Study:
    return Study("1.2.3", "SYNTH-1", None, "LUMBAR SPINE", tuple(volumes))


def test_quick_read_composes_all_stages_with_real_geometry() -> None:
    sag = sagittal_volume()
    l4l5_z = Z0 - DISC_ROWS[3]
    result = qr.quick_read(study(sag, axial_volume(l4l5_z)), stages=stages())
    assert result.status is AnalysisStatus.COMPLETE
    assert {f.level for f in result.findings} == {Level.L4_L5}
    assert len(result.findings) == 5
    canal = result.finding(Level.L4_L5, Condition.SPINAL_CANAL)
    assert canal is not None
    dsca = canal.measurements[MeasurementName.DSCA_MM2]
    assert dsca == pytest.approx(np.pi * 4.0 * 5.0, rel=0.03)
    assert canal.grade is Grade.SEVERE and not canal.uncertain  # 63 mm2 < 75: severe, model agrees
    assert canal.measurements[MeasurementName.AP_DIAMETER_MM] == pytest.approx(8.0, abs=0.5)
    assert canal.measurements[MeasurementName.DISC_HEIGHT_MM] == pytest.approx(9.0, abs=1.0)
    left = result.finding(Level.L4_L5, Condition.LEFT_SUBARTICULAR)
    assert left is not None
    assert left.measurements[MeasurementName.LATERAL_RECESS_DEPTH_MM] == pytest.approx(4.0, abs=0.45)
    # GradingPolicy: the learned model decides subarticular grades (cds.pipeline.grade.DECIDER_EVIDENCE);
    # the measured 4 mm (rule: moderate) is still shown and the disagreement flags the finding
    assert left.grade is Grade.SEVERE and left.uncertain
    foraminal = result.finding(Level.L4_L5, Condition.LEFT_FORAMINAL)
    assert foraminal is not None and foraminal.uncertain  # not measured: the model decides, flagged
    assert set(result.timings_ms) >= {
        "load_models",
        "segment_sagittal",
        "label_levels",
        "assign_axial",
        "segment_axial",
        "measure",
        "classify",
        "grade",
    }
    assert result.model_versions["classifier"] == "c@1"
    assert "L1-L2" in (result.reason or "")  # levels without axial slices are named


def test_no_sagittal_t2_is_unanalysable_with_reason() -> None:
    result = qr.quick_read(study(axial_volume(90.0)), stages=stages())
    assert result.status is AnalysisStatus.UNANALYSABLE
    assert "sagittal T2" in (result.reason or "")
    assert result.findings == ()


def test_no_axial_is_unanalysable() -> None:
    result = qr.quick_read(study(sagittal_volume()), stages=stages())
    assert result.status is AnalysisStatus.UNANALYSABLE and "axial" in (result.reason or "")


def test_no_disc_found_is_unanalysable() -> None:
    empty = stages(segment_sagittal=lambda v, _m: SagittalMasks(*(np.zeros(v.shape, bool) for _ in range(3))))
    result = qr.quick_read(study(sagittal_volume(), axial_volume(90.0)), stages=empty)
    assert result.status is AnalysisStatus.UNANALYSABLE and "levels not identifiable" in (result.reason or "")


def test_axial_stack_outside_every_level_is_unanalysable() -> None:
    result = qr.quick_read(study(sagittal_volume(), axial_volume(Z0 + 300.0)), stages=stages())
    assert result.status is AnalysisStatus.UNANALYSABLE and "no axial T2 slice" in (result.reason or "")


def test_stage_failure_names_the_stage() -> None:
    def boom(v: Volume, idx: object, _m: object) -> ax.AxialSegmentation:
        raise RuntimeError("out of memory")

    with pytest.raises(StageError) as err:
        qr.quick_read(
            study(sagittal_volume(), axial_volume(Z0 - DISC_ROWS[3])), stages=stages(segment_axial=boom)
        )
    assert err.value.stage == "segment_axial" and "out of memory" in err.value.message


def test_missing_weights_refuse_to_run(tmp_path: Path) -> None:
    """The real model loader with an empty models folder: ModelError, no findings from random weights."""
    with pytest.raises(ModelError):
        qr.quick_read(study(sagittal_volume(), axial_volume(90.0)), models_dir=tmp_path)


def test_slices_per_level_prefers_the_volume_with_most_slices() -> None:
    a, b = axial_volume(90.0), axial_volume(60.0)
    chosen = qr.slices_per_level(
        [(a, (Level.L4_L5, None, None)), (b, (Level.L4_L5, Level.L4_L5, Level.L5_S1))]
    )
    assert chosen[Level.L4_L5].volume is b and chosen[Level.L4_L5].indices == (0, 1)
    assert chosen[Level.L5_S1].indices == (2,)


@pytest.mark.parametrize("flip", ["rows", "cols", "transpose"])
def test_model_oriented_keeps_patient_coordinates(flip: str) -> None:
    """Re-indexing the sagittal stack for the network must not move any voxel in patient space."""
    sag = sagittal_volume()
    a = np.array(sag.affine)
    arr = np.arange(np.prod(sag.shape), dtype=np.float32).reshape(sag.shape)
    if flip == "rows":
        arr = arr[:, ::-1, :]
        a[:3, 3] += a[:3, 1] * (sag.shape[1] - 1)
        a[:3, 1] *= -1
    elif flip == "cols":
        arr = arr[:, :, ::-1]
        a[:3, 3] += a[:3, 2] * (sag.shape[2] - 1)
        a[:3, 2] *= -1
    else:
        arr = np.swapaxes(arr, 1, 2)
        a[:, [1, 2]] = a[:, [2, 1]]
    odd = replace(sag, array=np.ascontiguousarray(arr), affine=a)
    fixed = qr.model_oriented(odd)
    assert fixed.shape == sag.shape
    np.testing.assert_allclose(fixed.affine, sag.affine)
    np.testing.assert_array_equal(fixed.array, np.arange(np.prod(sag.shape)).reshape(sag.shape))


def test_central_block_is_clamped_to_the_stack() -> None:
    assert list(qr.central_block(15)) == [6, 7, 8]
    assert list(qr.central_block(15, half_width=3)) == [4, 5, 6, 7, 8, 9, 10]
    assert list(qr.central_block(2, half_width=3)) == [0, 1]
    assert list(qr.central_block(3)) == [0, 1, 2]
    assert list(qr.central_block(1)) == [0]


def test_foraminal_ratio_is_reported_only_once_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    from cds.pipeline import measure as ms

    volume = axial_volume(0.0)
    seg = fake_axial_seg(volume, (1, 2, 3), (6.0, 9.0))
    labels = seg.labels.copy()
    labels[:, 150:170, 250:270] = ax.FORAMEN  # patient left: high columns of the canonical grid
    seg = ax.AxialSegmentation(seg.images, seg.probs, labels, seg.slice_indices, seg.frames)
    monkeypatch.setattr(ms, "FORAMEN_RATIO_VALIDATED", False)
    hidden = qr.measure_level(seg, None, Level.L4_L5).by_condition
    assert hidden[Condition.LEFT_FORAMINAL] == () and hidden[Condition.RIGHT_FORAMINAL] == ()
    monkeypatch.setattr(ms, "FORAMEN_RATIO_VALIDATED", True)
    shown = qr.measure_level(seg, None, Level.L4_L5).by_condition
    (left,) = shown[Condition.LEFT_FORAMINAL]
    (right,) = shown[Condition.RIGHT_FORAMINAL]
    assert left.name is MeasurementName.FORAMINAL_AREA_RATIO and left.reliable and left.value > 0
    assert left.provenance.slice_index in (1, 2, 3)  # native slice index, not the row
    assert not right.reliable  # no foramen drawn on the right


def _recess_reading(
    level: Level, side: Side, estimate: SeverityEstimate, depth_mm: float, reliable: bool
) -> SubarticularReading:

    return SubarticularReading(level, side, estimate, depth_measurement(depth_mm, side, 2, "9.9.9", reliable))


@pytest.mark.parametrize("validated_depth", [False, True])
def test_subarticular_stage_replaces_the_classifiers_recess_estimates(validated_depth: bool) -> None:
    """The subarticular model's estimate replaces the classifier's. Without a validated depth its
    ordinal heads decide and the measured depth stays the measurement; where its card validated the
    estimated depth for grading, that depth is the measurement and its rule decides."""
    seen: list[tuple[set[Level], dict[Level, Sequence[float] | None]]] = []
    # model: left moderate, right normal; its estimated depths: left 2.5 mm (rule severe), right 7.5 mm
    moderate = SeverityEstimate(p_present=0.9, p_severe=0.1)

    def subarticular(
        segs: Mapping[Level, ax.AxialSegmentation],
        offsets: Mapping[Level, Sequence[float] | None],
        _m: Path | None,
    ) -> dict[tuple[Level, Side], SubarticularReading]:
        seen.append((set(segs), dict(offsets)))
        return {
            (Level.L4_L5, Side.LEFT): _recess_reading(Level.L4_L5, Side.LEFT, moderate, 2.5, validated_depth),
            (Level.L4_L5, Side.RIGHT): _recess_reading(Level.L4_L5, Side.RIGHT, NORMAL, 7.5, validated_depth),
        }

    sag = sagittal_volume()
    result = qr.quick_read(
        study(sag, axial_volume(Z0 - DISC_ROWS[3])), stages=stages(subarticular=subarticular)
    )
    assert result.status is AnalysisStatus.COMPLETE
    ((levels, offsets),) = seen
    assert levels == {Level.L4_L5} and offsets[Level.L4_L5] is not None  # slice offsets from the disc
    left = result.finding(Level.L4_L5, Condition.LEFT_SUBARTICULAR)
    right = result.finding(Level.L4_L5, Condition.RIGHT_SUBARTICULAR)
    assert left is not None and right is not None
    depth = MeasurementName.LATERAL_RECESS_DEPTH_MM
    if validated_depth:
        # the rule on the model's depth decides; the heads disagree on the left: flagged
        assert left.measurements[depth] == pytest.approx(2.5) and right.measurements[depth] == pytest.approx(
            7.5
        )
        assert left.grade is Grade.SEVERE and left.uncertain
        assert right.grade is Grade.NORMAL_MILD and not right.uncertain
    else:
        # the heads decide (the classifier said severe everywhere); the measured 4 mm is shown and
        # its rule (moderate) flags where it differs
        assert left.measurements[depth] == pytest.approx(4.0, abs=0.45)
        assert left.grade is Grade.MODERATE and not left.uncertain
        assert right.grade is Grade.NORMAL_MILD and right.uncertain
    canal = result.finding(Level.L4_L5, Condition.SPINAL_CANAL)
    assert canal is not None and canal.grade is Grade.SEVERE  # other conditions untouched
    assert "subarticular" in result.timings_ms
