"""The overlay PNG of one heatmap: the native axial slice, the map in colour, labels and a legend.

Drawn with Pillow (fast, no figure machinery); matplotlib only supplies the colour map table.
The picture states what it shows, because a PNG travels without its context (FHIR Media, viewer,
e-mail): level and condition with the grade, "Grad-CAM (classifier 'present' output)", the
patient directions of the slice, the peak, and a colour bar that says the scale is relative
(min-max within this map), not a probability.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from cds.explain.gradcam_geometry import CropPlacement

COLOUR_MAP = "inferno"
#: Heat below this (relative) is not drawn, so the anatomy stays readable.
SHOW_ABOVE = 0.2
MAX_ALPHA = 0.55
MIN_IMAGE_PX = 384
HEADER_PX = 44
LEGEND_PX = 70
#: zlib level for the PNG: 1 is ~10x faster to encode than the default 6 for ~15 % larger files.
PNG_COMPRESS_LEVEL = 1


@dataclass(frozen=True)
class OverlayLabel:
    title: str  # e.g. "L4-L5 central canal stenosis: severe"
    subtitle: str  # e.g. "Grad-CAM of the classifier's 'present' output; + = peak"


@functools.cache
def _lut() -> NDArray[np.uint8]:
    import matplotlib

    cmap = matplotlib.colormaps[COLOUR_MAP]
    return (np.asarray(cmap(np.linspace(0.0, 1.0, 256)))[:, :3] * 255.0).round().astype(np.uint8)


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


def _grey(image: NDArray[np.floating]) -> NDArray[np.float32]:
    values = image[image > 0]
    if values.size < 16:
        return np.zeros_like(image, dtype=np.float32)
    lo, hi = np.percentile(values, (1.0, 99.5))
    return np.clip((image - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0).astype(np.float32)


def _directions(placement: CropPlacement) -> dict[str, NDArray[np.float64]]:
    """Native-pixel unit vectors of patient left and posterior on this slice (from the frame)."""
    m = placement.frame.matrix  # native delta per canonical (row=posterior, col=left) step
    post = m[:, 0] / np.linalg.norm(m[:, 0])
    left = m[:, 1] / np.linalg.norm(m[:, 1])
    return {"L": left, "R": -left, "P": post, "A": -post}


def render_overlay(
    slice_image: NDArray[np.floating],
    native_map: NDArray[np.floating],
    placement: CropPlacement,
    peak_ij: tuple[int, int] | None,
    label: OverlayLabel,
    out_path: Path,
) -> Path:
    """Write the overlay PNG and return its path."""
    rows, cols = slice_image.shape
    scale = max(1, int(np.ceil(MIN_IMAGE_PX / max(rows, cols))))
    grey = (_grey(np.asarray(slice_image, dtype=np.float32)) * 255.0).astype(np.uint8)
    heat = np.clip(np.asarray(native_map, dtype=np.float32), 0.0, 1.0)
    colour = _lut()[(heat * 255.0).astype(np.uint8)].astype(np.float32)
    alpha = np.where(heat >= SHOW_ABOVE, MAX_ALPHA * heat, 0.0)[..., None]
    rgb = (grey[..., None].astype(np.float32) * (1.0 - alpha) + colour * alpha).round().astype(np.uint8)
    image = Image.fromarray(rgb, "RGB").resize((cols * scale, rows * scale), Image.Resampling.BILINEAR)

    width, height = image.size
    canvas = Image.new("RGB", (width + LEGEND_PX, height + HEADER_PX), (0, 0, 0))
    canvas.paste(image, (0, HEADER_PX))
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 4), label.title, fill=(255, 255, 255), font=_font(16))
    draw.text((6, 24), label.subtitle, fill=(190, 190, 190), font=_font(12))

    # Patient directions at the image edges.
    centre = np.array([height / 2.0, width / 2.0])
    for letter, d in _directions(placement).items():
        reach = 0.46 * min(width, height)
        y, x = centre + d * reach
        draw.text((float(x) - 4, float(y) + HEADER_PX - 7), letter, fill=(255, 255, 0), font=_font(14))

    if peak_ij is not None:
        y = (peak_ij[0] + 0.5) * scale + HEADER_PX
        x = (peak_ij[1] + 0.5) * scale
        r = 7
        draw.line([(x - r, y), (x + r, y)], fill=(0, 255, 255), width=2)
        draw.line([(x, y - r), (x, y + r)], fill=(0, 255, 255), width=2)

    # Colour bar: relative saliency within this map.
    bar_top, bar_bottom = HEADER_PX + 24, HEADER_PX + height - 24
    bar_x0, bar_x1 = width + 12, width + 28
    lut = _lut()
    span = max(bar_bottom - bar_top, 1)
    for y in range(bar_top, bar_bottom):
        value = 1.0 - (y - bar_top) / span
        draw.line([(bar_x0, y), (bar_x1, y)], fill=tuple(int(c) for c in lut[int(value * 255)]))
    small = _font(11)
    draw.text((bar_x0 - 4, bar_top - 16), "high", fill=(255, 255, 255), font=small)
    draw.text((bar_x0 - 2, bar_bottom + 4), "low", fill=(255, 255, 255), font=small)
    draw.text((bar_x1 + 3, (bar_top + bar_bottom) / 2 - 6), "rel.", fill=(190, 190, 190), font=small)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out_path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return out_path
