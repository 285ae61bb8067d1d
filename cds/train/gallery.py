"""A PNG gallery of predictions on real slices: image | ground truth | prediction, one row per slice.

Looking at the errors matters more than the mean Dice (where does a synthetic-only model fail on
real anatomy?), so every training run writes one for its evaluation patients.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from cds.pipeline.segment import segment_sagittal_slice
from cds.train.data import SPIDER_SPACING_MM, read_spider_patient

#: Overlay colours per class: disc red, vertebra green, canal blue.
COLOURS = np.array([[0, 0, 0], [230, 60, 60], [60, 200, 80], [70, 110, 255]], dtype=np.float32)


def overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, (0.5, 99.5))
    grey = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    rgb = np.repeat(grey[..., None], 3, axis=2)
    m = labels > 0
    rgb[m] = 0.55 * rgb[m] + 0.45 * COLOURS[labels[m]]
    return rgb.astype(np.uint8)


def save_gallery(
    models_dir: Path, spider_root: Path, patients: Sequence[str], out_png: Path, width: int = 256
) -> Path:
    rows = []
    for patient in patients:
        slices = read_spider_patient(spider_root, patient)
        s = slices[len(slices) // 2]
        pred = segment_sagittal_slice(s.image, SPIDER_SPACING_MM, models_dir=models_dir).label_map()
        grey = overlay(s.image, np.zeros_like(s.labels))
        panels = [grey, overlay(s.image, s.labels), overlay(s.image, pred)]
        h = round(s.image.shape[0] * width / s.image.shape[1])
        rows.append(
            np.concatenate([np.asarray(Image.fromarray(p).resize((width, h))) for p in panels], axis=1)
        )
    out_png.parent.mkdir(parents=True, exist_ok=True)
    widest = max(r.shape[1] for r in rows)
    Image.fromarray(np.concatenate([r[:, :widest] for r in rows], axis=0)).save(out_png)
    return out_png
