"""Grad-CAM of the foraminal model (cds.ml.foraminal): the explanation of the grades it decided.

Since the foraminal findings are graded by the parasagittal foraminal model, not by the axial
classifier, their heatmaps must come from that model: a classifier heatmap next to a grade the
classifier did not decide would explain nothing. Same discipline as cds.explain.gradcam:

* one forward + one backward pass for all of a study's foraminal targets (one batch row per
  target; rows never interact: BatchNorm uses running statistics in eval mode, dropout is off);
* on a private frozen copy of the loaded network (the shared one serves quick reads), with a
  forward hook that makes the last block's output a leaf, so no parameter gradient is computed;
* inside :func:`foramen_session`, a context manager that always releases the library's hooks.

Target: the "present" logit (P(grade >= moderate)) at the last block *before the final pooling*
(``ForaminalNet.blocks[-1]``, a 12 x 12 grid of 3.5 mm cells on the 48-pixel crop), not at
``last_conv`` (6 x 6 cells of 7 mm). Why: the foraminal cause regions are a few millimetres
across, and a 7 mm cell cannot place a maximum within the pointing game's 3 mm of them -- on the
45 validation studies of synth-train (299 truth moderate/severe foramina) the peaks at
``last_conv`` snapped to cell centres 5-7 px caudal and posterior of the cause (hit 196/299 =
65.6 %, left 62 %, right 69 %), the finer block's hit 269/299 = 90.0 % (left 134/149, right
135/150). Deeper layers were also tried there: the stride-2 blocks (stem, blocks[0]) answer to
edges everywhere (26-29 %); gradient-times-activation maps were no better (88.6 %); the severe
logit (78.6 %) and the negated area-ratio output (71.2 %) point worse than "present". The model
and its crops are unchanged: only where its gradient is read.

Geometry: the layer's grid is carried onto the crop exactly (cell v of a layer after p 2x poolings
behind the stride-2 stem is centred on crop pixel ``2**(p+1) * v + 2**p - 1``), instead of the
library's resize, which assumes centre-aligned grids and is off by half a crop pixel per
pooling. The map lives on the parasagittal crop (rows cranial -> caudal, columns anterior ->
posterior); it is carried back onto the native sagittal slice nearest the reported foramen plane
(the slice the finding's ``foraminal_area_ratio`` provenance names, 16.5 mm lateral of the disc
centroid) through the crop's patient-space frame, and its peak is given in patient millimetres.
The map has no lateral resolution (the crop's channels are lateral offsets, summed by the first
convolution); choosing the slice by the input gradient's strongest channel instead was tried on
validation and pointed worse (246/299).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from cds.domain import Condition, Level, Side
from cds.pipeline import foramen_crop as fc

if TYPE_CHECKING:
    from pytorch_grad_cam import GradCAM
    from torch import nn

    from cds.dicom.volume import Volume
    from cds.ml.foraminal import ForaminalNet, LoadedForaminal

SUBTITLE = (
    "Grad-CAM of the foraminal model's 'present' output, parasagittal (+ = peak; decision support only)"
)
SIDE_OF: Mapping[Condition, Side] = {
    Condition.LEFT_FORAMINAL: Side.LEFT,
    Condition.RIGHT_FORAMINAL: Side.RIGHT,
}


@dataclass(frozen=True)
class ForamenInput:
    """One foramen's model input and where it lies: the crop, its frame and its sagittal slice."""

    level: Level
    side: Side
    crop: NDArray[np.float32]  # (channels, SIZE, SIZE), exactly what the stage gave the model
    frame: fc.ForamenFrame
    slice_index: int  # sagittal slice nearest the reported foramen plane
    slice_image: NDArray[np.float32]  # that slice (model-oriented: head up, anterior left)
    affine: NDArray[np.float64]  # of the model-oriented sagittal volume
    series_uid: str


def foramen_inputs(
    sagittal: Volume, centres: Mapping[Level, np.ndarray], normals: Mapping[Level, np.ndarray]
) -> dict[tuple[Level, Side], ForamenInput]:
    """Rebuild the stage's crops (same deterministic functions) with their placement."""
    from cds.pipeline.foraminal import reported_slice

    crops = fc.foramen_crops(sagittal, centres, normals)
    out: dict[tuple[Level, Side], ForamenInput] = {}
    for (level, side), crop in crops.items():
        k = reported_slice(sagittal, centres[level], side)
        out[(level, side)] = ForamenInput(
            level=level,
            side=side,
            crop=crop,
            frame=fc.frame_for(sagittal, centres[level], normals[level]),
            slice_index=k,
            slice_image=np.asarray(sagittal.array[k], dtype=np.float32),
            affine=np.asarray(sagittal.affine, dtype=np.float64),
            series_uid=sagittal.series_uid,
        )
    return out


@dataclass(frozen=True)
class ForamenCam:
    level: Level
    side: Side
    crop_map: NDArray[np.float32]  # (SIZE, SIZE), [0, 1]
    raw: NDArray[np.float32]  # unscaled ReLU(sum w A) at the layer's resolution (layer_grid)
    logit: float  # calibrated present logit


def _members(network: nn.Module) -> list[ForaminalNet]:
    from cds.ml.foraminal import ForaminalEnsemble, ForaminalNet

    if isinstance(network, ForaminalEnsemble):
        return [m for m in network.members if isinstance(m, ForaminalNet)]
    if isinstance(network, ForaminalNet):
        return [network]
    raise TypeError(f"not a foraminal network: {type(network).__name__}")


def cam_layers(network: nn.Module) -> list[nn.Module]:
    """The explained layer of each member: the last block before the final pooling
    (``blocks[-1]``), or ``last_conv`` for a network with a single block."""
    return [m.blocks[-1] if len(m.blocks) else m.last_conv for m in _members(network)]


def layer_grid(network: nn.Module) -> tuple[int, int]:
    """(stride, offset) of the explained layer on the crop: its cell v is centred on crop pixel
    ``stride * v + offset``. The stem halves the crop (a 3x3 convolution, stride 2, padding 1:
    cell u centred on pixel 2u); each 2x max-pooling doubles the stride and moves the centre by
    half the previous stride; convolutions with padding 1 keep the grid."""
    pools = max(len(_members(network)[0].blocks) - 1, 0)
    return 2 ** (pools + 1), 2**pools - 1


def layer_to_crop(raw: NDArray[np.floating], stride: int, offset: int) -> NDArray[np.float32]:
    """A layer-resolution map -> the (SIZE, SIZE) crop grid, bilinear between cell centres (edge
    cells extended), min-max scaled to [0, 1] like the library's maps (all zero stays zero)."""
    from scipy import ndimage

    q = (np.arange(fc.SIZE, dtype=np.float64) - offset) / stride
    rr, cc = np.meshgrid(q, q, indexing="ij")
    m = ndimage.map_coordinates(np.asarray(raw, dtype=np.float64), [rr, cc], order=1, mode="nearest")
    m = m - m.min()
    top = float(m.max())
    return (m / top if top > 0 else m).astype(np.float32)


@contextmanager
def foramen_session(loaded: LoadedForaminal) -> Iterator[GradCAM]:
    """A GradCAM at the foraminal model's explained layers (:func:`cam_layers`) on its private
    frozen copy."""
    from cds.explain.gradcam import frozen_cam_session

    with frozen_cam_session(loaded.network, cam_layers) as cam:
        yield cam


def compute_foramen_maps(
    loaded: LoadedForaminal,
    inputs: Mapping[tuple[Level, Side], ForamenInput],
    targets: Sequence[tuple[Level, Side]],
) -> list[ForamenCam]:
    """All targets in one forward + one backward pass (a batch row per target)."""
    import torch

    from cds.explain.torchvision_compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    missing = sorted(f"{lv.value} {s.value}" for lv, s in targets if (lv, s) not in inputs)
    if missing:
        raise ValueError(f"no foraminal crop for {', '.join(missing)}")
    if not targets:
        return []
    batch = np.stack([inputs[t].crop for t in targets]).astype(np.float32)
    stride, offset = layer_grid(loaded.network)
    with foramen_session(loaded) as cam:
        x = torch.from_numpy(np.ascontiguousarray(batch))
        cam(input_tensor=x, targets=[ClassifierOutputTarget(0) for _ in targets])
        pairs = zip(cam.activations_and_grads.activations, cam.activations_and_grads.gradients, strict=True)
        per_layer = [
            np.maximum((g.numpy().mean(axis=(2, 3))[:, :, None, None] * a.numpy()).sum(axis=1), 0.0)
            for a, g in pairs
        ]
        logits = cam.outputs.detach().cpu().numpy()
    raw = np.mean(per_layer, axis=0)  # ensemble members: the mean of their maps
    # The library's own maps (resized with centre-aligned grids) are not used: see the docstring.
    return [
        ForamenCam(
            lv, side, layer_to_crop(raw[i], stride, offset), raw[i].astype(np.float32), float(logits[i, 0])
        )
        for i, (lv, side) in enumerate(targets)
    ]


def crop_coordinates(inp: ForamenInput, ij: NDArray[np.float64]) -> NDArray[np.float64]:
    """(N, 2) native (row, col) on the input's slice -> (N, 2) crop (row, col)."""
    kij = np.column_stack([np.full(len(ij), float(inp.slice_index)), ij, np.ones(len(ij))])
    patient = kij @ inp.affine[:3, :].T
    d = patient - inp.frame.origin
    rows = (fc.CRANIAL_TOP_MM - d @ inp.frame.cranial) / fc.SPACING_MM
    cols = (d @ inp.frame.posterior - fc.POSTERIOR_START_MM) / fc.SPACING_MM
    return np.column_stack([rows, cols])


def native_map(cam: ForamenCam, inp: ForamenInput) -> NDArray[np.float32]:
    """The crop map on the whole native sagittal slice (0 outside the crop)."""
    from scipy import ndimage

    rows, cols = inp.slice_image.shape
    # crop_coordinates is affine in (row, col): read its matrix off three points and let
    # affine_transform interpolate (the same bilinear values as map_coordinates over every pixel's
    # coordinates, without building them).
    base, down, right = crop_coordinates(inp, np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    matrix = np.column_stack([down - base, right - base])
    values = ndimage.affine_transform(
        np.asarray(cam.crop_map, dtype=np.float64),
        matrix,
        offset=base,
        output_shape=(rows, cols),
        order=1,
        mode="constant",
        cval=0.0,
    )
    return values.astype(np.float32)


def peak(
    native: NDArray[np.float32], inp: ForamenInput
) -> tuple[tuple[int, int], tuple[float, float, float]] | None:
    """Pixel and patient millimetres of the map's maximum; None for an empty map."""
    if native.size == 0 or float(native.max()) <= 0.0:
        return None
    i, j = (int(v) for v in np.unravel_index(int(np.argmax(native)), native.shape))
    mm = inp.affine[:3, :] @ np.array([float(inp.slice_index), float(i), float(j), 1.0])
    return (i, j), (round(float(mm[0]), 2), round(float(mm[1]), 2), round(float(mm[2]), 2))


def render(
    slice_image: NDArray[np.float32],
    native: NDArray[np.float32],
    peak_ij: tuple[int, int] | None,
    title: str,
    out_path: Path,
) -> Path:
    """Overlay PNG on the sagittal slice (head up, anterior left), with a relative colour bar."""
    from cds.explain import gradcam_render as gr

    def letters(width: int, height: int) -> list[tuple[str, float, float]]:  # head up, anterior left
        return [
            ("H", width / 2, 4),
            ("F", width / 2, height - 18),
            ("A", 4, height / 2),
            ("P", width - 14, height / 2),
        ]

    return gr.draw_overlay(slice_image, native, peak_ij, gr.OverlayLabel(title, SUBTITLE), letters, out_path)


def region_words(cam: ForamenCam, peak_rc: tuple[float, float] | None) -> str:
    """Where the crop map peaks, in words without numbers (the rationale verifier checks every
    number against the findings): the side's foraminal region, above/at/below the disc."""
    side = cam.side.value
    if peak_rc is None:
        return "no region (empty map)"
    cranial_mm = fc.CRANIAL_TOP_MM - peak_rc[0] * fc.SPACING_MM
    where = (
        "above the disc" if cranial_mm > 4.0 else ("below the disc" if cranial_mm < -4.0 else "at the disc")
    )
    return f"{side} neural foramen region {where} (parasagittal)"


def foramen_heatmaps(
    result: Any,
    foramina: Mapping[tuple[Level, Side], ForamenInput],
    targets: Sequence[Any],
    out_dir: Path,
    *,
    models_dir: Path | None = None,
) -> tuple[Any, ...]:
    """Heatmaps (cds.explain.gradcam_study.Heatmap) of foraminal targets (CamTarget) that have a
    foraminal input, all in one batched pass; writes ``<level>_<condition>.png`` and ``.npz``."""
    from cds.explain.gradcam_study import Heatmap
    from cds.ml.foraminal import load_foraminal
    from cds.pipeline.foraminal import MODEL_NAME

    keyed = [(t, (t.level, SIDE_OF[t.condition])) for t in targets if t.condition in SIDE_OF]
    keyed = [(t, k) for t, k in keyed if k in foramina]
    if not keyed:
        return ()
    loaded = load_foraminal(MODEL_NAME, models_dir)
    cams = compute_foramen_maps(loaded, foramina, [k for _, k in keyed])
    out_dir.mkdir(parents=True, exist_ok=True)
    grades = {(f.level, f.condition): f.grade for f in result.findings}
    made = []
    for (target, key), cam in zip(keyed, cams, strict=True):
        inp = foramina[key]
        native = native_map(cam, inp)
        found = peak(native, inp)
        peak_ij, peak_mm = (found[0], found[1]) if found else (None, None)
        grade = grades.get((target.level, target.condition))
        stem = f"{target.level.value}_{target.condition.value}"
        title = f"{target.level.value} {target.condition.display}" + (f": {grade.display}" if grade else "")
        overlay = render(inp.slice_image, native, peak_ij, title, out_dir / f"{stem}.png")
        raw_path = out_dir / f"{stem}.npz"
        np.savez_compressed(
            raw_path,
            raw=cam.raw,
            crop_map=cam.crop_map,
            native_map=native.astype(np.float16),
            frame_origin=inp.frame.origin,
            frame_cranial=inp.frame.cranial,
            frame_posterior=inp.frame.posterior,
            frame_lateral_left=inp.frame.lateral_left,
            slice_index=np.asarray(inp.slice_index),
            affine=inp.affine,
            logit=np.asarray(cam.logit),
        )
        crop_peak = np.unravel_index(int(np.argmax(cam.crop_map)), cam.crop_map.shape)
        made.append(
            Heatmap(
                level=target.level,
                condition=target.condition,
                grade=grade,
                overlay=overlay,
                raw=raw_path,
                series_uid=inp.series_uid,
                slice_index=inp.slice_index,
                peak_ij=peak_ij,
                peak_mm=peak_mm,
                region=region_words(cam, (float(crop_peak[0]), float(crop_peak[1])) if found else None),
                logit=cam.logit,
            )
        )
    return tuple(made)
