"""Axial stage pre/post-processing: the canonical frame puts patient left and posterior on fixed
array axes whatever the scanner wrote, and maps points back to native pixels exactly."""

from __future__ import annotations

import numpy as np
import pytest

from cds.pipeline import axial as ax


def axial_affine(
    row_dir: tuple[float, float, float],
    col_dir: tuple[float, float, float],
    spacing: tuple[float, float] = (0.5, 0.5),
) -> np.ndarray:
    """(k, i, j) -> LPS with rows moving along row_dir and columns along col_dir."""
    a = np.eye(4)
    a[:3, 0] = (0.0, 0.0, 3.0)
    a[:3, 1] = np.asarray(row_dir) * spacing[0]
    a[:3, 2] = np.asarray(col_dir) * spacing[1]
    a[:3, 3] = (-50.0, -50.0, 0.0)
    return a


def marker_image(shape: tuple[int, int], at: tuple[int, int]) -> np.ndarray:
    img = np.zeros(shape, np.float32)
    img[at[0] - 3 : at[0] + 4, at[1] - 3 : at[1] + 4] = 1.0
    return img


@pytest.mark.parametrize(
    ("row_dir", "col_dir"),
    [
        ((0.0, 1.0, 0.0), (1.0, 0.0, 0.0)),  # standard: rows posterior, columns patient left
        ((0.0, -1.0, 0.0), (1.0, 0.0, 0.0)),  # rows anterior
        ((0.0, 1.0, 0.0), (-1.0, 0.0, 0.0)),  # columns patient right
        ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),  # transposed
    ],
)
def test_canonical_frame_puts_left_and_posterior_on_fixed_axes(row_dir: tuple, col_dir: tuple) -> None:
    shape = (200, 200)
    a = axial_affine(row_dir, col_dir)
    frame = ax.canonical_frame(a, shape)
    # a marker 20 mm to the patient's left and 10 mm posterior of the slice centre
    centre = np.array([(shape[0] - 1) / 2, (shape[1] - 1) / 2])
    offset_mm = np.array([20.0, 10.0, 0.0])  # LPS: +x left, +y posterior
    step_i, step_j = a[:3, 1], a[:3, 2]
    ij = centre + np.array([offset_mm @ step_i / 0.25, offset_mm @ step_j / 0.25])
    img = marker_image(shape, (round(ij[0]), round(ij[1])))
    out = ax.to_canonical(img, frame)
    rows, cols = np.nonzero(out > 0.5)
    r, c = rows.mean(), cols.mean()
    cc = (ax.CANONICAL_SIZE - 1) / 2
    assert (r - cc) * ax.CANONICAL_SPACING_MM == pytest.approx(10.0, abs=0.5)  # posterior = down
    assert (c - cc) * ax.CANONICAL_SPACING_MM == pytest.approx(20.0, abs=0.5)  # patient left = right


def test_frame_round_trip_native_canonical() -> None:
    frame = ax.canonical_frame(axial_affine((0.0, 1.0, 0.0), (-1.0, 0.0, 0.0), (0.6, 0.4)), (180, 240))
    pts = np.array([[10.0, 20.0], [79.5, 79.5], [150.25, 3.5]])
    np.testing.assert_allclose(frame.to_canonical(frame.to_native(pts)), pts, atol=1e-9)


def test_frame_rejects_a_sagittal_plane() -> None:
    a = np.eye(4)
    a[:3, 1] = (0.0, 0.0, -1.0)
    a[:3, 2] = (0.0, 1.0, 0.0)
    a[:3, 0] = (1.0, 0.0, 0.0)
    with pytest.raises(Exception, match="left-right"):
        ax.canonical_frame(a, (100, 100))


def test_normalise_ignores_padding_and_scales_to_unit_range() -> None:
    img = np.zeros((50, 50), np.float32)
    img[10:40, 10:40] = np.linspace(100, 300, 900).reshape(30, 30)
    out = ax.normalise(img)
    assert out[0, 0] == 0.0
    assert np.percentile(out[10:40, 10:40], 50) == pytest.approx(0.5, abs=0.05)
    assert ax.normalise(np.zeros((20, 20), np.float32)).max() == 0.0


def test_postprocess_upsamples_before_argmax() -> None:
    probs = np.zeros((1, len(ax.AXIAL_CLASSES), 8, 8), np.float32)
    probs[0, 0] = 1.0
    probs[0, 0, 2:6, 2:6] = 0.0
    probs[0, ax.SAC, 2:6, 2:6] = 1.0
    labels = ax.postprocess(probs)
    assert labels.shape == (1, 16, 16)
    assert (labels == ax.SAC).sum() == pytest.approx(4 * 4 * ax.MEASURE_UPSAMPLE**2, abs=8)


def test_class_of_gt_maps_the_synthetic_label_table() -> None:
    from cds.synth import labels as L

    lut = ax.class_of_gt()
    assert lut[L.GT_DURAL_SAC] == lut[L.GT_CAUDA] == lut[L.GT_CORD] == ax.SAC
    assert lut[L.GT_DISC0 + 7] == ax.DISC
    assert lut[L.GT_VERTEBRA0 + 6] == ax.BODY
    assert lut[L.GT_FACET0 + 6] == lut[L.GT_FACET_JOINT] == ax.FACET
    assert lut[L.GT_POST0 + 6] == ax.POSTERIOR
    assert lut[L.GT_FLAVUM] == ax.FLAVUM
    assert lut[L.GT_FORAMEN_LEFT] == lut[L.GT_ROOT_RIGHT] == ax.FORAMEN
    assert lut[L.GT_MUSCLE] == ax.BACKGROUND


def test_shipped_axial_model_is_verified_and_segments_a_slice() -> None:
    """models/axial_seg: card matches the weights (sha256), and the network maps a canonical
    slice to per-class probabilities of the same grid."""
    from cds.ml.loading import load_model
    from cds.ml.spec import read_card

    card = read_card(ax.MODEL_NAME)
    assert card.labels == ax.AXIAL_CLASSES
    assert card.input.input_size == (ax.CANONICAL_SIZE, ax.CANONICAL_SIZE)
    assert card.metrics["validation_dice"]["dural_sac"] > 0.8  # as measured at training time
    model = load_model(ax.MODEL_NAME, device="cpu")
    probs = ax.predict(model, np.zeros((1, ax.CANONICAL_SIZE, ax.CANONICAL_SIZE), np.float32))
    assert probs.shape == (1, len(ax.AXIAL_CLASSES), ax.CANONICAL_SIZE, ax.CANONICAL_SIZE)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)


def test_upsample2_matches_scipy_zoom_and_postprocess_matches_full_argmax() -> None:
    from scipy import ndimage

    rng = np.random.default_rng(3)
    logits = ndimage.gaussian_filter(rng.normal(size=(2, len(ax.AXIAL_CLASSES), 40, 40)), (0, 0, 3, 3)) * 30
    probs = np.exp(logits)
    probs = (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)
    zoomed = ndimage.zoom(probs, (1, 1, 2, 2), order=1, grid_mode=True, mode="nearest")
    np.testing.assert_allclose(ax.upsample2(probs), zoomed, atol=1e-6)
    for threshold in (0.5, 0.7):
        full = np.argmax(zoomed, axis=1)
        weak = (full == ax.SAC) & (zoomed[:, ax.SAC] <= threshold)
        others = zoomed.copy()
        others[:, ax.SAC] = -1.0
        full[weak] = np.argmax(others, axis=1)[weak]
        np.testing.assert_array_equal(ax.postprocess(probs, threshold), full)
