"""Small overlay images for the report's best/worst gallery (PIL only, no matplotlib).

Each case is one PNG of three panels side by side: the image, the pipeline's segmentation over it,
and the ground truth over it, with the same colours. They are written while a study is evaluated
(the images are not kept afterwards) and the report later copies those of the best and worst
cases next to itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

RGB = tuple[int, int, int]

#: Sagittal classes (cds.pipeline.segment LABELS order).
SAGITTAL_COLOURS: Mapping[int, RGB] = {1: (255, 200, 0), 2: (60, 130, 255), 3: (0, 220, 120)}
#: Axial classes (cds.pipeline.axial AXIAL_CLASSES order).
AXIAL_COLOURS: Mapping[int, RGB] = {
    1: (0, 220, 120),  # dural sac
    2: (255, 200, 0),  # disc
    3: (60, 130, 255),  # vertebral body
    4: (230, 60, 230),  # facet
    5: (0, 200, 230),  # posterior elements
    6: (255, 130, 0),  # ligamentum flavum
    7: (230, 40, 40),  # foramen
}
ALPHA = 0.45
GAP_PX = 4


@dataclass(frozen=True)
class Mark:
    """A text label at (row, col) of the image, green when right, red when wrong."""

    row: float
    col: float
    text: str
    correct: bool


def grey(image: np.ndarray) -> np.ndarray:
    """Float image -> uint8 RGB, scaled to its 1st-99th percentile (MR has no absolute scale)."""
    img = np.asarray(image, dtype=np.float64)
    lo, hi = np.percentile(img, (1, 99)) if img.size else (0.0, 1.0)
    scaled = np.clip((img - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(img)
    g = (scaled * 255).astype(np.uint8)
    return np.stack([g, g, g], axis=-1)


def paint(rgb: np.ndarray, labels: np.ndarray, colours: Mapping[int, RGB]) -> np.ndarray:
    """Blend each class's colour over the image where the label map has that class."""
    out = rgb.astype(np.float64)
    for cls, colour in colours.items():
        sel = labels == cls
        out[sel] = (1 - ALPHA) * out[sel] + ALPHA * np.asarray(colour, dtype=np.float64)
    return out.astype(np.uint8)


def _resize_nearest(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    rows = (np.arange(shape[0]) * labels.shape[0] / shape[0]).astype(int)
    cols = (np.arange(shape[1]) * labels.shape[1] / shape[1]).astype(int)
    return labels[np.ix_(rows, cols)]


def triptych(
    image: np.ndarray,
    predicted: np.ndarray,
    truth: np.ndarray,
    colours: Mapping[int, RGB],
    marks: Sequence[Mark] = (),
    title: str = "",
    height: int = 260,
) -> Image.Image:
    """[image | prediction | truth], scaled to ``height`` pixels; marks go on the prediction panel."""
    shape = image.shape[:2]
    base = grey(image)
    pred = paint(base, _resize_nearest(predicted, shape), colours)
    true = paint(base, _resize_nearest(truth, shape), colours)
    scale = height / shape[0]
    width = max(1, round(shape[1] * scale))
    panels = [
        Image.fromarray(p).resize((width, height), Image.Resampling.BILINEAR) for p in (base, pred, true)
    ]
    top = 14 if title else 0
    canvas = Image.new("RGB", (3 * width + 2 * GAP_PX, height + top), (255, 255, 255))
    for i, panel in enumerate(panels):
        canvas.paste(panel, (i * (width + GAP_PX), top))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((2, 1), title, fill=(0, 0, 0))
    font = ImageFont.load_default(size=11)
    for m in marks:
        x = width + GAP_PX + m.col * scale + 4
        y = top + m.row * scale - 6
        box = draw.textbbox((x, y), m.text, font=font)
        draw.rectangle(box, fill=(0, 0, 0))  # dark backing: the name stays legible on any tissue
        draw.text((x, y), m.text, fill=(0, 255, 0) if m.correct else (255, 60, 60), font=font)
    for i, name in enumerate(("image", "pipeline", "truth")):
        draw.text((i * (width + GAP_PX) + 3, top + height - 12), name, fill=(255, 255, 0))
    return canvas


def save(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A 128-colour palette keeps a gallery image near 30 KB (the report is committed with them).
    image.quantize(colors=128).save(path, format="PNG", optimize=True)
    return path
