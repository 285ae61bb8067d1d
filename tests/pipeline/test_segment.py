"""Sagittal segmentation stage: pre-process, predict and post-process, each on its own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cds.errors import BadRequest
from cds.ml.spec import InputContract
from cds.pipeline import segment as seg

CONTRACT = InputContract("head up, anterior left", (1.0, 1.0), (64, 48), "percentile clip", (1.0, 99.0))


def test_normalise_intensity_maps_percentiles_to_unit_range() -> None:
    img = np.linspace(0, 1000, 10_000, dtype=np.float32).reshape(100, 100)
    out = seg.normalise_intensity(img, (1.0, 99.0))
    assert out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0
    assert abs(float(np.median(out)) - 0.5) < 0.01
    assert not seg.normalise_intensity(np.full((20, 20), 7.0), (1.0, 99.0)).any()


def test_geometry_resamples_to_model_spacing_when_the_field_of_view_fits() -> None:
    g = seg.plan_geometry((100, 80), (0.5, 0.5), CONTRACT)
    assert g.resampled_shape == (50, 40)
    assert g.model_spacing_mm == (1.0, 1.0)
    assert (g.pad_top, g.pad_left) == (7, 4)


def test_geometry_coarsens_uniformly_when_the_field_of_view_is_too_large() -> None:
    g = seg.plan_geometry((200, 100), (1.0, 1.0), CONTRACT)  # 200 mm tall, model holds 64 mm
    assert g.resampled_shape[0] == 64
    assert g.model_spacing_mm[0] == pytest.approx(g.model_spacing_mm[1], rel=0.05)


def test_model_grid_round_trip_restores_input_shape_and_content() -> None:
    labels = np.zeros((100, 80), dtype=np.uint8)
    labels[20:60, 30:50] = 2
    g = seg.plan_geometry(labels.shape, (0.5, 0.5), CONTRACT)
    grid = seg.to_model_grid(labels, g, CONTRACT.input_size, order=0)
    assert grid.shape == CONTRACT.input_size
    onehot = np.stack([grid == c for c in range(4)]).astype(np.float32)
    back = seg.probabilities_to_input_grid(onehot, g).argmax(0)
    assert back.shape == labels.shape
    inter = np.logical_and(back == 2, labels == 2).sum()
    assert 2 * inter / ((back == 2).sum() + (labels == 2).sum()) > 0.95


def test_preprocess_validates_input() -> None:
    with pytest.raises(BadRequest):
        seg.preprocess_slice(np.zeros((10, 10, 3)), (1.0, 1.0), CONTRACT)
    with pytest.raises(BadRequest):
        seg.preprocess_slice(np.zeros((64, 64)), (0.0, 1.0), CONTRACT)
    bad = np.zeros((64, 64))
    bad[3, 3] = np.nan
    with pytest.raises(BadRequest):
        seg.preprocess_slice(bad, (1.0, 1.0), CONTRACT)


def test_small_components_are_removed_and_canal_keeps_every_part_above_its_threshold() -> None:
    labels = np.zeros((60, 60), dtype=np.uint8)
    labels[5:25, 5:25] = seg.VERTEBRA
    labels[30:32, 30:32] = seg.VERTEBRA  # 4 px speckle
    labels[5:40, 40:46] = seg.CANAL
    labels[45:51, 40:46] = seg.CANAL  # canal piece beyond a stenosis, above the area threshold
    labels[55:58, 52:55] = seg.CANAL  # 9 px canal speckle, below it
    labels[28:31, 5:25] = seg.DISC
    masks = seg.clean_labels(
        labels, pixel_area_mm2=1.0, thresholds={"min_vertebra_area_mm2": 10.0, "min_canal_area_mm2": 30.0}
    )
    assert masks.vertebra.sum() == 400
    assert masks.canal.sum() == 35 * 6 + 6 * 6
    assert masks.canal[45:51, 40:46].all() and not masks.canal[55:58, 52:55].any()
    assert masks.disc.sum() == 60
    assert np.array_equal(masks.label_map() == seg.DISC, masks.disc)


def test_postprocess_returns_boolean_masks_of_the_input_shape() -> None:
    g = seg.plan_geometry((100, 80), (0.5, 0.5), CONTRACT)
    probs = np.zeros((4, *CONTRACT.input_size), dtype=np.float32)
    probs[0] = 1.0
    probs[:, 20:40, 15:30] = 0
    probs[seg.DISC, 20:40, 15:30] = 1.0
    masks = seg.postprocess_slice(probs, g)
    assert masks.shape == (100, 80)
    assert masks.disc.dtype == bool and masks.disc.any()
    assert not masks.canal.any()


def test_masks_are_read_only_and_shapes_must_agree() -> None:
    m = seg.SagittalMasks.from_label_map(np.array([[0, 1], [2, 3]], dtype=np.uint8))
    with pytest.raises(ValueError):
        m.disc[0, 0] = True
    with pytest.raises(ValueError):
        seg.SagittalMasks(np.zeros((2, 2), bool), np.zeros((2, 3), bool), np.zeros((2, 2), bool))


def test_stack_with_wrong_dimensions_is_rejected_before_loading_a_model(tmp_path: Path) -> None:
    with pytest.raises(BadRequest):
        seg.segment_sagittal_stack(np.zeros((10, 10)), (1.0, 1.0), models_dir=tmp_path)


def _affine(row_dir: tuple[float, float, float], col_dir: tuple[float, float, float]) -> np.ndarray:
    a = np.eye(4)
    a[:3, 0] = (1.0, 0.0, 0.0)  # slices towards patient left (sagittal normal)
    a[:3, 1] = row_dir
    a[:3, 2] = col_dir
    return a


def test_standard_sagittal_orientation_needs_no_change() -> None:
    o = seg.SagittalOrientation.from_affine(_affine((0, 0, -1), (0, 1, 0)))  # rows go down, cols posterior
    assert (o.transpose, o.flip_rows, o.flip_cols) == (False, False, False)


def test_orientation_flips_and_transposes_to_head_up_anterior_left_and_back() -> None:
    # rows run posterior (+Y), columns run up (+Z): transpose, then flip rows (head must be row 0)
    o = seg.SagittalOrientation.from_affine(_affine((0, 1, 0), (0, 0, 1)))
    assert o.transpose and o.flip_rows and not o.flip_cols
    arr = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    out = o.apply(arr)
    assert out.shape == (2, 4, 3)
    assert np.array_equal(o.undo(out), arr)
    assert o.spacing((0.5, 0.8)) == (0.8, 0.5)


def test_sparse_linear_resize_matches_scipy_zoom() -> None:
    from scipy import ndimage

    x = np.random.default_rng(0).random((3, 30, 24)).astype(np.float32)
    ours = seg.resize_linear(x, (64, 51))
    ref = ndimage.zoom(x, [1, 64 / 30, 51 / 24], order=1, mode="nearest", grid_mode=True)[:, :64, :51]
    assert ours.shape == (3, 64, 51)
    assert np.abs(ours - ref).max() < 1e-5
