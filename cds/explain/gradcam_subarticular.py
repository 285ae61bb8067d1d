"""Grad-CAM of the subarticular model (cds.ml.subarticular): the explanation of the grades it decided.

When the lateral recess findings are graded from the subarticular model, their heatmaps must come
from that model, not from the axial classifier (a map of a model that did not decide the grade
explains nothing). Same discipline as cds.explain.gradcam and cds.explain.gradcam_foramen:

* one forward + one backward pass for all of a study's recess targets (a batch row per target;
  rows never interact: BatchNorm uses running statistics in eval mode, dropout is off);
* on the private frozen copy of the loaded network (:func:`cds.explain.gradcam.frozen_cam_session`),
  whose hooks are always released.

Target: the "present" logit (P(grade >= moderate)) at ``SubarticularNet.last_conv``. The map lives
on the recess crop (0.4 mm, the right side mirrored); it is carried back onto the canonical grid
of the level (undoing the mirroring) and from there, through the canonical frame, onto the native
axial slice in the middle of the crop's three slices (the slice the finding's estimated depth
names). The peak is given in patient millimetres, like every other heatmap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from cds.domain import Condition, Level, Side
from cds.explain.gradcam_geometry import CropPlacement, peak_pixel, placement_for
from cds.pipeline import axial as ax
from cds.pipeline import recess_crop as rc

if TYPE_CHECKING:
    from cds.dicom.volume import Volume
    from cds.ml.subarticular import LoadedSubarticular

SUBTITLE = "Grad-CAM of the subarticular model's 'present' output (+ = peak; decision support only)"
SIDE_OF: Mapping[Condition, Side] = {
    Condition.LEFT_SUBARTICULAR: Side.LEFT,
    Condition.RIGHT_SUBARTICULAR: Side.RIGHT,
}


@dataclass(frozen=True)
class RecessInput:
    """One recess's model input and where it lies: the crop, the level's whole canonical grid as
    a placement on the crop's central native slice, and that slice's image."""

    level: Level
    side: Side
    crop: rc.RecessCrop
    placement: CropPlacement  # canonical grid (origin 0, 0) of the central slice
    slice_image: NDArray[np.float32]


def recess_inputs(
    segs: Mapping[Level, ax.AxialSegmentation],
    offsets: Mapping[Level, Sequence[float] | None],
    volumes: Mapping[Level, Volume],
) -> dict[tuple[Level, Side], RecessInput]:
    """Rebuild the stage's crops (same deterministic function) with their placement."""
    from cds.pipeline.subarticular import level_crops

    out: dict[tuple[Level, Side], RecessInput] = {}
    for (level, side), crop in level_crops(segs, offsets).items():
        seg, volume = segs[level], volumes[level]
        row = crop.central_row
        native_k = seg.slice_indices[row]
        centre = (ax.CANONICAL_SIZE // 2, ax.CANONICAL_SIZE // 2)
        placement = placement_for(
            centre, ax.CANONICAL_SIZE, seg.frames[row], native_k, volume.affine, volume.series_uid
        )
        out[(level, side)] = RecessInput(
            level, side, crop, placement, np.asarray(volume.array[native_k], dtype=np.float32)
        )
    return out


@dataclass(frozen=True)
class RecessCam:
    level: Level
    side: Side
    crop_map: NDArray[np.float32]  # (SIZE, SIZE), [0, 1], in the (mirrored) crop's orientation
    raw: NDArray[np.float32]  # unscaled ReLU(sum w A) at the layer's resolution
    logit: float  # calibrated present logit


def compute_recess_maps(
    loaded: LoadedSubarticular,
    inputs: Mapping[tuple[Level, Side], RecessInput],
    targets: Sequence[tuple[Level, Side]],
) -> list[RecessCam]:
    """All targets in one forward + one backward pass (a batch row per target)."""
    import torch

    from cds.explain.gradcam import frozen_cam_session
    from cds.explain.torchvision_compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    missing = sorted(f"{lv.value} {s.value}" for lv, s in targets if (lv, s) not in inputs)
    if missing:
        raise ValueError(f"no recess crop for {', '.join(missing)}")
    if not targets:
        return []
    batch = np.stack([inputs[t].crop.array for t in targets]).astype(np.float32)
    with frozen_cam_session(loaded.network, lambda net: net.cam_layers) as cam:
        maps = cam(
            input_tensor=torch.from_numpy(np.ascontiguousarray(batch)),
            targets=[ClassifierOutputTarget(0) for _ in targets],
        )
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
        raw = np.maximum((grads.mean(axis=(2, 3))[:, :, None, None] * acts).sum(axis=1), 0.0)
        logits = cam.outputs.detach().cpu().numpy()
    return [
        RecessCam(lv, side, np.asarray(maps[i], np.float32), raw[i].astype(np.float32), float(logits[i, 0]))
        for i, (lv, side) in enumerate(targets)
    ]


def canonical_map(crop_map: NDArray[np.floating], crop: rc.RecessCrop) -> NDArray[np.float32]:
    """The crop map on the level's whole canonical grid (mirroring undone), 0 outside the crop."""
    size = ax.CANONICAL_SIZE
    uu, vv = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64), indexing="ij")
    r0, c0 = float(crop.coords[0, 0, 0]), float(crop.coords[1, 0, 0])
    row_step = float(crop.coords[0, 1, 0] - crop.coords[0, 0, 0])
    col_step = float(crop.coords[1, 0, 1] - crop.coords[1, 0, 0])  # negative for the mirrored right
    ab = np.stack([(uu - r0) / row_step, (vv - c0) / col_step])
    out = ndimage.map_coordinates(
        np.asarray(crop_map, dtype=np.float32), ab.reshape(2, -1), order=1, mode="constant", cval=0.0
    )
    return out.reshape(size, size).astype(np.float32)


def native_map_and_peak(
    cam: RecessCam, inp: RecessInput
) -> tuple[NDArray[np.float32], tuple[int, int] | None, tuple[float, float, float] | None]:
    """The map on the native slice, its peak pixel and the peak in patient mm (None: empty map)."""
    native = inp.placement.crop_map_to_native(canonical_map(cam.crop_map, inp.crop))
    peak = peak_pixel(native)
    if peak is None:
        return native, None, None
    mm = inp.placement.native_to_patient(np.asarray([peak], dtype=np.float64))[0]
    return native, peak, (round(float(mm[0]), 2), round(float(mm[1]), 2), round(float(mm[2]), 2))


def region_words(cam: RecessCam) -> str:
    """Where the crop map peaks, in words without numbers (the rationale verifier checks every
    number against the findings)."""
    if float(cam.crop_map.max()) <= 0.0:
        return "no region (empty map)"
    _r, c = np.unravel_index(int(np.argmax(cam.crop_map)), cam.crop_map.shape)
    lateral_mm = c * rc.SPACING_MM - rc.MEDIAL_MM
    where = "central canal" if lateral_mm < 5.0 else "lateral recess"
    return f"{cam.side.value} {where} region at the disc level (axial)"


def recess_heatmaps(
    result: Any,
    recesses: Mapping[tuple[Level, Side], RecessInput],
    targets: Sequence[Any],
    out_dir: Path,
    *,
    models_dir: Path | None = None,
) -> tuple[Any, ...]:
    """Heatmaps (cds.explain.gradcam_study.Heatmap) of subarticular targets (CamTarget) that have a
    recess input, all in one batched pass; writes ``<level>_<condition>.png`` and ``.npz``."""
    from cds.explain.gradcam_render import OverlayLabel, render_overlay
    from cds.explain.gradcam_study import Heatmap
    from cds.ml.subarticular import load_subarticular
    from cds.pipeline.subarticular import MODEL_NAME

    keyed = [(t, (t.level, SIDE_OF[t.condition])) for t in targets if t.condition in SIDE_OF]
    keyed = [(t, k) for t, k in keyed if k in recesses]
    if not keyed:
        return ()
    cams = compute_recess_maps(load_subarticular(MODEL_NAME, models_dir), recesses, [k for _, k in keyed])
    out_dir.mkdir(parents=True, exist_ok=True)
    grades = {(f.level, f.condition): f.grade for f in result.findings}
    made = []
    for (target, key), cam in zip(keyed, cams, strict=True):
        inp = recesses[key]
        native, peak_ij, peak_mm = native_map_and_peak(cam, inp)
        grade = grades.get((target.level, target.condition))
        stem = f"{target.level.value}_{target.condition.value}"
        title = f"{target.level.value} {target.condition.display}" + (f": {grade.display}" if grade else "")
        overlay = render_overlay(
            inp.slice_image,
            native,
            inp.placement,
            peak_ij,
            OverlayLabel(title, SUBTITLE),
            out_dir / f"{stem}.png",
        )
        raw_path = out_dir / f"{stem}.npz"
        np.savez_compressed(
            raw_path,
            raw=cam.raw,
            crop_map=cam.crop_map,
            native_map=native.astype(np.float16),
            crop_coords=inp.crop.coords.astype(np.float32),
            slice_index=np.asarray(inp.placement.slice_index),
            affine=inp.placement.affine,
            logit=np.asarray(cam.logit),
        )
        made.append(
            Heatmap(
                level=target.level,
                condition=target.condition,
                grade=grade,
                overlay=overlay,
                raw=raw_path,
                series_uid=inp.placement.series_uid,
                slice_index=inp.placement.slice_index,
                peak_ij=peak_ij,
                peak_mm=peak_mm,
                region=region_words(cam),
                logit=cam.logit,
            )
        )
    return tuple(made)
