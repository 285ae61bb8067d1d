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
    """Native axial slices -> normalised canonical images (slices, H, W) and their frames."""
    frames = []
    images = []
    for k in slice_indices:
        frame = canonical_frame(affine, volume_array.shape[1:])
        frames.append(frame)
        images.append(normalise(to_canonical(volume_array[k].astype(np.float32), frame)))
    return np.stack(images).astype(np.float32), tuple(frames)


def predict(model: LoadedModel, images: np.ndarray) -> np.ndarray:
    """(slices, H, W) float32 -> (slices, classes, H, W) softmax probabilities."""
    import torch

    with torch.inference_mode():
        x = torch.from_numpy(images[:, None]).to(model.device)
        return torch.softmax(model.network(x), dim=1).cpu().numpy()


#: Default minimum dural sac probability for a pixel to count as sac; the model card's
#: ``thresholds["sac_probability"]`` overrides it. Why above 0.5: the network over-segments the
#: sac at its blurred boundary (validation bias +12 mm2 at 0.5, +2 mm2 at 0.7), and DSCA grades
#: the canal, so the threshold is set where the area is unbiased on the validation split.
DEFAULT_SAC_THRESHOLD = 0.5


def postprocess(probs: np.ndarray, sac_threshold: float = DEFAULT_SAC_THRESHOLD) -> np.ndarray:
    """Probabilities -> labels on the MEASURE_UPSAMPLE x finer grid (bilinear, then argmax); a
    pixel keeps the sac label only when its sac probability exceeds ``sac_threshold``, else it
    takes its most probable other class."""
    up = ndimage.zoom(
        probs, (1, 1, MEASURE_UPSAMPLE, MEASURE_UPSAMPLE), order=1, grid_mode=True, mode="nearest"
    )
    labels = np.argmax(up, axis=1).astype(np.uint8)
    weak = (labels == SAC) & (up[:, SAC] <= sac_threshold)
    if weak.any():
        others = up.copy()
        others[:, SAC] = -1.0
        labels[weak] = np.argmax(others, axis=1).astype(np.uint8)[weak]
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
