"""Training examples of the fine dural-sac model: one crop per axial slice of a synthetic study.

Each example is a *wide* crop (CROP_SIZE + 2 * MARGIN pixels at the crop spacing) around the
slice's true sac centroid, shifted by a seeded random offset of up to ``JITTER_MM``; training
takes a random CROP_SIZE window of it, so the network learns to find the sac anywhere within the
centring error of axial_seg's centroid, which is what it is given at inference.

Target: the generator's sac label (CSF + roots + cord, what the DSCA counts) on the native slice,
interpolated bilinearly onto the crop grid, i.e. a soft target in [0, 1]. Why soft: the sum of a
soft map is the area of the native label at sub-pixel precision; a thresholded target would teach
the network the 0.8 mm staircase of the native pixels.

Cached per study (``<cache>/<study>.npz``, float16) so that a resumed or repeated training run
does not re-read DICOM.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cds.pipeline import axial as ax
from cds.pipeline import sac_crop as sc

log = logging.getLogger(__name__)

#: Extra pixels on each side of the inference window (random-shift augmentation: 3.2 mm).
MARGIN = 8
WIDE = sc.CROP_SIZE + 2 * MARGIN
#: Random offset of the wide crop's centre from the true centroid (mm, per axis).
JITTER_MM = 1.5
#: Slices with less true sac than this (native pixels) are skipped (a slice outside the canal).
MIN_SAC_PIXELS = 10
CACHE_VERSION = 1


@dataclass(frozen=True)
class StudyCrops:
    """All crops of one study: x (n, WIDE, WIDE) inputs, t (n, WIDE, WIDE) soft sac targets."""

    study: str
    x: np.ndarray
    t: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])


def read_split(data_root: Path) -> dict[str, list[str]]:
    return {k: list(v) for k, v in json.loads((data_root / "split.json").read_text()).items()}


def study_crops(folder: Path, seed: int, jitter_mm: float = JITTER_MM) -> StudyCrops:
    """Crops of every axial T2 slice of a generated study that crosses the dural sac."""
    from cds.dicom import load_study
    from cds.evaluation.truth import read_truth

    truth = read_truth(folder)
    study = load_study(folder / "dicom")
    lut = ax.class_of_gt()
    rng = np.random.default_rng(seed)
    xs: list[np.ndarray] = []
    ts: list[np.ndarray] = []
    for vol in study.axial_t2:
        raw = truth.labels_of(vol.series_uid)
        if raw is None or raw.shape != vol.shape:
            continue
        frame = ax.canonical_frame(vol.affine, vol.shape[1:])
        array = np.asarray(vol.array)
        for k in range(vol.shape[0]):
            sac = lut[raw[k]] == ax.SAC
            rows, cols = np.nonzero(sac)
            if rows.size < MIN_SAC_PIXELS:
                continue
            centre = frame.to_canonical(np.array([[rows.mean(), cols.mean()]]))[0]
            centre = centre + rng.uniform(-1.0, 1.0, size=2) * jitter_mm / ax.CANONICAL_SPACING_MM
            crop = sc.SacCrop((float(centre[0]), float(centre[1])), size=WIDE)
            xs.append(sc.normalised_crop(array[k], crop, frame))
            ts.append(np.clip(sc.sample(sac.astype(np.float32), sc.native_coords(crop, frame), WIDE), 0, 1))
    shape = (0, WIDE, WIDE)
    return StudyCrops(
        truth.name,
        np.stack(xs).astype(np.float16) if xs else np.zeros(shape, np.float16),
        np.stack(ts).astype(np.float16) if ts else np.zeros(shape, np.float16),
    )


def build_cache(
    data_root: Path, names: Sequence[str], cache_dir: Path, *, seed: int, jitter_mm: float = JITTER_MM
) -> list[StudyCrops]:
    """Crops of the named studies, read from ``cache_dir`` or built (and written) there."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    out: list[StudyCrops] = []
    for name in tqdm(names, desc="sac crops", leave=False):
        path = cache_dir / f"{name}-j{jitter_mm:g}.npz"
        if path.is_file():
            with np.load(path) as z:
                if int(z["version"]) == CACHE_VERSION:
                    out.append(StudyCrops(name, z["x"], z["t"]))
                    continue
        crops = study_crops(data_root / name, seed + zlib.crc32(name.encode()), jitter_mm)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, x=crops.x, t=crops.t, version=np.int64(CACHE_VERSION))
        tmp.replace(path)
        out.append(crops)
    return out
