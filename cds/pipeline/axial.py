"""Stage 1 (axial): segment the structures the measurements need on axial T2 slices of a level.

Split as pre-process / predict / post-process (ARCHITECTURE principle 7):

* pre-process (NumPy): resample each slice from its own grid into a *canonical frame* using the
  volume's affine: square pixels of ``CANONICAL_SPACING_MM``, rows running anterior -> posterior,
  columns running patient right -> left, centred on the slice centre. Why: every later step
  (the U-Net, the measurements, the classifier's crops) then sees the same orientation and
  scale whatever the scanner wrote, so "left" and "AP" are plain array directions;
* predict (torch): the U-Net gives class probabilities on the canonical grid;
* post-process (NumPy): probabilities upsampled 2x (bilinear) before the argmax so that areas are
  measured on 0.4 mm pixels, which halves the boundary quantisation error of the dural sac area.

Classes (``AXIAL_CLASSES``) are what the measurements and the classifier need; they map from the
synthetic ground-truth labels through ``CLASS_OF_GT`` (cds.synth.labels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from cds.errors import StageError

if TYPE_CHECKING:
    from cds.ml.loading import LoadedModel

STAGE = "segment_axial"
MODEL_NAME = "axial_seg"

#: Output classes of the axial network, in order.
AXIAL_CLASSES: tuple[str, ...] = (
    "background",
    "dural_sac",  # CSF + cauda equina + conus (what DSCA counts)
    "disc",
    "vertebral_body",
    "facet",  # superior/inferior articular processes and the facet joint
    "posterior_elements",  # pedicles, laminae, spinous and transverse processes
    "ligamentum_flavum",
    "foramen",  # exiting root + perineural fat, either side
)
BACKGROUND, SAC, DISC, BODY, FACET, POSTERIOR, FLAVUM, FORAMEN = range(len(AXIAL_CLASSES))

#: Canonical frame: square pixels and a fixed field of view around the slice centre.
CANONICAL_SPACING_MM = 0.8
CANONICAL_SIZE = 160  # 128 mm: vertebral body, canal, facets and both foramina fit
#: Measurements run on the probabilities upsampled by this factor.
MEASURE_UPSAMPLE = 2


def class_of_gt() -> np.ndarray:
    """Lookup table: synthetic ground-truth label value (0..255) -> axial class index."""
    from cds.synth import labels as L

    table = np.zeros(256, dtype=np.uint8)
    for i in range(L.N_V):
        table[L.GT_VERTEBRA0 + i] = BODY
        table[L.GT_POST0 + i] = POSTERIOR
        table[L.GT_FACET0 + i] = FACET
    for j in range(L.N_D):
        table[L.GT_DISC0 + j] = DISC
    for v in (L.GT_DURAL_SAC, L.GT_CAUDA, L.GT_CORD):
        table[v] = SAC
    table[L.GT_FACET_JOINT] = FACET
    table[L.GT_FLAVUM] = FLAVUM
    for v in (L.GT_ROOT_LEFT, L.GT_ROOT_RIGHT, L.GT_FORAMEN_LEFT, L.GT_FORAMEN_RIGHT):
        table[v] = FORAMEN
    return table


@dataclass(frozen=True)
class CanonicalFrame:
    """Maps canonical-grid pixels (u = row, v = col) of one slice to that slice's native pixels.

    native (i, j) = centre_ij + M @ ((u, v) - centre_uv) where M (2x2) combines the direction
    change and the spacing change; ``to_native`` applies it, ``to_canonical`` inverts it.
    """

    matrix: np.ndarray  # (2, 2)
    native_centre: np.ndarray  # (2,)
    canonical_centre: np.ndarray  # (2,)
    native_shape: tuple[int, int]

    def to_native(self, uv: np.ndarray) -> np.ndarray:
        uv = np.asarray(uv, dtype=np.float64)
        return (uv - self.canonical_centre) @ self.matrix.T + self.native_centre

    def to_canonical(self, ij: np.ndarray) -> np.ndarray:
        ij = np.asarray(ij, dtype=np.float64)
        return (ij - self.native_centre) @ np.linalg.inv(self.matrix).T + self.canonical_centre


def canonical_frame(
    affine: np.ndarray,
    native_shape: tuple[int, int],
    size: int = CANONICAL_SIZE,
    spacing_mm: float = CANONICAL_SPACING_MM,
) -> CanonicalFrame:
    """Frame for one axial slice of a volume with ``affine`` (voxel (k, i, j) -> LPS mm).

    Canonical columns follow patient left (+x projected into the slice plane); canonical rows
    follow the in-plane direction perpendicular to it that points posterior (+y). Oblique axial
    stacks (tilted along the disc) keep "posterior" as the in-plane direction closest to +y.
    """
    a = np.asarray(affine, dtype=np.float64)
    col_step = a[:3, 1]  # moving down one native row
    row_step = a[:3, 2]  # moving right one native column
    sr, sc = float(np.linalg.norm(col_step)), float(np.linalg.norm(row_step))
    e_i, e_j = col_step / sr, row_step / sc
    normal = np.cross(e_j, e_i)
    left = np.array([1.0, 0.0, 0.0]) - normal * normal[0]
    if np.linalg.norm(left) < 0.5:
        raise StageError(STAGE, "axial slice plane does not contain the patient's left-right axis")
    left /= np.linalg.norm(left)
    post = np.cross(normal, left)
    if post[1] < 0:
        post = -post
    # d(mm) for one canonical step along rows (post) and cols (left), expressed in native pixels.
    m = (
        np.array(
            [
                [post @ e_i / sr, left @ e_i / sr],
                [post @ e_j / sc, left @ e_j / sc],
            ]
        )
        * spacing_mm
    )
    centre_n = (np.asarray(native_shape, dtype=np.float64) - 1.0) / 2.0
    centre_c = np.full(2, (size - 1) / 2.0)
    return CanonicalFrame(m, centre_n, centre_c, (int(native_shape[0]), int(native_shape[1])))


def to_canonical(
    image: np.ndarray, frame: CanonicalFrame, size: int = CANONICAL_SIZE, order: int = 1
) -> np.ndarray:
    """Resample a native 2D slice (or label map with order=0) onto the canonical grid."""
    uu, vv = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64), indexing="ij")
    ij = frame.to_native(np.stack([uu.ravel(), vv.ravel()], axis=1))
    out = ndimage.map_coordinates(image, ij.T, order=order, mode="constant", cval=0.0, prefilter=False)
    return out.reshape(size, size).astype(image.dtype if order == 0 else np.float32)


def normalise(image: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.0)) -> np.ndarray:
    """Robust intensity scaling to about [0, 1] from percentiles of the non-zero pixels.

    Why percentiles of non-zero pixels: MR intensities have no absolute scale, and the padding
    outside the field of view (zeros) must not drag the low percentile down.
    """
    values = image[image > 0]
    if values.size < 16:
        return np.zeros_like(image, dtype=np.float32)
    lo, hi = np.percentile(values, percentiles)
    if hi <= lo:
        return np.zeros_like(image, dtype=np.float32)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.5).astype(np.float32)


@dataclass(frozen=True)
class AxialSegmentation:
    """Class probabilities and labels of one level's axial slices, on the canonical grid.

    ``images`` are the normalised canonical slices (slices, H, W); ``probs`` (slices, classes,
    H, W); ``labels`` the argmax on the 2x upsampled grid (slices, 2H, 2W) with spacing
    ``label_spacing_mm``; ``slice_indices`` the native slice index of each row.
    """

    images: np.ndarray
    probs: np.ndarray
    labels: np.ndarray
    slice_indices: tuple[int, ...]
    frames: tuple[CanonicalFrame, ...]

    @property
    def label_spacing_mm(self) -> tuple[float, float]:
        s = CANONICAL_SPACING_MM / MEASURE_UPSAMPLE
        return (s, s)

    def mask(self, cls: int) -> np.ndarray:
        return self.labels == cls


def preprocess(
    volume_array: np.ndarray, affine: np.ndarray, slice_indices: Sequence[int]
) -> tuple[np.ndarray, tuple[CanonicalFrame, ...]]:
    """Native axial slices -> normalised canonical images (slices, H, W) and their frames.

    Every slice of a volume shares one in-plane geometry, so the frame and its sampling
    coordinates are computed once and reused for each slice.
    """
    frame = canonical_frame(affine, volume_array.shape[1:])
    coords = _canonical_coords(frame)
    images = [
        normalise(_sample(volume_array[k].astype(np.float32), coords, CANONICAL_SIZE)) for k in slice_indices
    ]
    return np.stack(images).astype(np.float32), tuple(frame for _ in slice_indices)


def _canonical_coords(frame: CanonicalFrame, size: int = CANONICAL_SIZE) -> np.ndarray:
    uu, vv = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64), indexing="ij")
    return np.asarray(frame.to_native(np.stack([uu.ravel(), vv.ravel()], axis=1)).T)


def _sample(image: np.ndarray, coords: np.ndarray, size: int) -> np.ndarray:
    out = ndimage.map_coordinates(image, coords, order=1, mode="constant", cval=0.0, prefilter=False)
    return np.asarray(out.reshape(size, size), dtype=np.float32)


def predict(model: LoadedModel, images: np.ndarray) -> np.ndarray:
    """(slices, H, W) float32 -> (slices, classes, H, W) softmax probabilities (one batched pass)."""
    from cds.pipeline.inference import softmax_forward

    return softmax_forward(model.network, model.device, images)


#: Default minimum dural sac probability for a pixel to count as sac; the model card's
#: ``thresholds["sac_probability"]`` overrides it. Why above 0.5: the network over-segments the
#: sac at its blurred boundary (validation bias +12 mm2 at 0.5, +2 mm2 at 0.7), and DSCA grades
#: the canal, so the threshold is set where the area is unbiased on the validation split.
DEFAULT_SAC_THRESHOLD = 0.5


def upsample2(array: np.ndarray) -> np.ndarray:
    """Bilinear 2x upsampling of the last two axes, pixel centres aligned, edges clamped.

    The same values as ``ndimage.zoom(array, 2, order=1, grid_mode=True, mode="nearest")`` on those
    axes (output pixel 2m samples the input at m - 1/4, 2m + 1 at m + 1/4), computed with four
    shifted sums instead of a general spline zoom: about 20x faster on a level's probabilities.
    """
    out = array
    for axis in (-2, -1):
        n = out.shape[axis]
        prev = np.take(out, np.r_[0, 0 : n - 1], axis=axis)
        nxt = np.take(out, np.r_[1:n, n - 1], axis=axis)
        even = 0.75 * out + 0.25 * prev
        odd = 0.75 * out + 0.25 * nxt
        pair = np.stack([even, odd], axis=axis)  # (..., n, 2, ...) along the axis
        shape = list(out.shape)
        shape[axis] = 2 * n
        out = pair.reshape(shape)
    return np.asarray(out, dtype=np.float32)


def _contributors(n: int) -> tuple[np.ndarray, np.ndarray]:
    """For 2x bilinear upsampling of an axis of length n: each output pixel's nearer input pixel
    (weight 3/4) and farther input pixel (weight 1/4), edges clamped (as in :func:`upsample2`)."""
    i = np.arange(2 * n)
    near = i // 2
    far = np.clip(np.where(i % 2 == 0, near - 1, near + 1), 0, n - 1)
    return near, far


def postprocess(probs: np.ndarray, sac_threshold: float = DEFAULT_SAC_THRESHOLD) -> np.ndarray:
    """Probabilities -> labels on the MEASURE_UPSAMPLE x finer grid (bilinear, then argmax); a
    pixel keeps the sac label only when its sac probability exceeds ``sac_threshold``, else it
    takes its most probable other class.

    Computed without upsampling every class: a fine pixel is a convex combination of four coarse
    pixels, so where all four have the same most probable class the fine pixel has it too. Only the
    pixels along class boundaries (and sac pixels near the threshold) get the full interpolation.
    Same labels as argmax over :func:`upsample2` of all classes, several times faster.
    """
    if MEASURE_UPSAMPLE != 2:
        raise ValueError("postprocess implements the 2x measurement grid only")
    h, w = probs.shape[-2:]
    coarse = np.argmax(probs, axis=1).astype(np.uint8)
    r_near, r_far = _contributors(h)
    c_near, c_far = _contributors(w)
    corners = [coarse[:, r][:, :, c] for r in (r_near, r_far) for c in (c_near, c_far)]
    labels = corners[0].copy()
    mixed = (corners[1] != labels) | (corners[2] != labels) | (corners[3] != labels)
    sac_up = upsample2(probs[:, SAC])
    need = mixed | ((labels == SAC) & (sac_up <= sac_threshold))
    if need.any():
        s, i, j = np.nonzero(need)
        last = np.moveaxis(probs, 1, -1)  # (slices, H, W, classes) view
        ri, rf, ci, cf = r_near[i], r_far[i], c_near[j], c_far[j]
        rows_near = 0.75 * last[s, ri, ci] + 0.25 * last[s, ri, cf]
        rows_far = 0.75 * last[s, rf, ci] + 0.25 * last[s, rf, cf]
        vec = (0.75 * rows_near + 0.25 * rows_far).astype(np.float32)  # (n, classes)
        best = np.argmax(vec, axis=1)
        weak = (best == SAC) & (vec[:, SAC] <= sac_threshold)
        if weak.any():
            others = vec[weak]
            others[:, SAC] = -1.0
            best[weak] = np.argmax(others, axis=1)
        labels[s, i, j] = best.astype(np.uint8)
    return labels


def segment_level(
    volume_array: np.ndarray,
    affine: np.ndarray,
    slice_indices: Sequence[int],
    *,
    models_dir: Path | None = None,
) -> AxialSegmentation:
    """Segment the given axial slices of one level; failures are reported as this stage's."""
    from cds.ml.loading import load_model

    if not slice_indices:
        raise StageError(STAGE, "no axial slices for the level")
    model = load_model(MODEL_NAME, models_dir)
    try:
        images, frames = preprocess(volume_array, affine, slice_indices)
        probs = predict(model, images)
        labels = postprocess(
            probs, float(model.spec.thresholds.get("sac_probability", DEFAULT_SAC_THRESHOLD))
        )
    except StageError:
        raise
    except Exception as exc:
        raise StageError(STAGE, f"{type(exc).__name__}: {exc}") from exc
    return AxialSegmentation(images, probs, labels, tuple(int(k) for k in slice_indices), frames)
