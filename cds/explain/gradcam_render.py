"""The overlay PNG of one heatmap: the native axial slice, the map in colour, labels and a legend.

Drawn with Pillow (fast, no figure machinery); matplotlib only supplies the colour map table.
The picture states what it shows, because a PNG travels without its context (FHIR Media, viewer,
e-mail): level and condition with the grade, "Grad-CAM (classifier 'present' output)", the
patient directions of the slice, the peak, and a colour bar that says the scale is relative
(min-max within this map), not a probability.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
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
    """The slice windowed to its 1st-99.5th percentile of non-zero pixels, in [0, 1]. The
    percentiles come from every other row and column: a display window needs no more, and the
    partition over all pixels was a tenth of an overlay's drawing time."""
    values = image[::2, ::2]
    values = values[values > 0]
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


def _scaled_size(rows: int, cols: int) -> tuple[int, int, float]:
    """Width, height and scale of the drawn image: the longer side at least MIN_IMAGE_PX (so the
    labels fit), never shrunk. Not an integer factor: PNG encoding time grows with the pixels
    (a 320 px slice at x2 took ~13 ms to encode, at x1.2 ~5 ms), and bilinear resampling does
    not need one."""
    scale = max(1.0, MIN_IMAGE_PX / max(rows, cols))
    return max(1, round(cols * scale)), max(1, round(rows * scale)), scale


@functools.cache
def _colour_bar(height: int, width: int = 16) -> Image.Image:
    """The legend's colour bar, high at the top, `height` px tall (drawn once per height)."""
    values = 1.0 - np.arange(height, dtype=np.float64) / max(height, 1)
    rows = _lut()[(values * 255).astype(np.int64)]
    return Image.fromarray(np.repeat(rows[:, None, :], width, axis=1).astype(np.uint8), "RGB")


def blend(slice_image: NDArray[np.floating], native_map: NDArray[np.floating]) -> NDArray[np.uint8]:
    """The slice in grey with the map in colour where it is above SHOW_ABOVE (RGB, slice size).

    Blended only where the map is shown (usually a small part of the slice): same values as
    blending every pixel with alpha 0 elsewhere, at a fraction of the cost."""
    grey = (_grey(np.asarray(slice_image, dtype=np.float32)) * 255.0).astype(np.uint8)
    heat = np.clip(np.asarray(native_map, dtype=np.float32), 0.0, 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    shown = heat >= SHOW_ABOVE
    if shown.any():
        h = heat[shown]
        alpha = (MAX_ALPHA * h)[:, None]
        colour = _lut()[(h * 255.0).astype(np.uint8)].astype(np.float32)
        base = grey[shown][:, None].astype(np.float32)
        rgb[shown] = (base * (1.0 - alpha) + colour * alpha).round().astype(np.uint8)
    return rgb


@functools.lru_cache(maxsize=256)
def wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, max_px: int) -> tuple[str, ...]:
    """`text` in lines of at most `max_px` (words are never split; a longer word gets its own
    line): the header must say all of what the picture shows, whatever the image's width.
    Cached: a study's overlays share their subtitles and widths."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(candidate) <= max_px:
            lines[-1] = candidate
        else:
            lines.append(word)
    return tuple(lines) or ("",)


#: Where the patient-direction letters go: (letter, x, y) in the drawn image's pixels, given its
#: width and height.
Letters = Callable[[int, int], Iterable[tuple[str, float, float]]]


def draw_overlay(
    slice_image: NDArray[np.floating],
    native_map: NDArray[np.floating],
    peak_ij: tuple[int, int] | None,
    label: OverlayLabel,
    letters: Letters,
    out_path: Path,
) -> Path:
    """Write the overlay PNG (slice, map, title, direction letters, peak cross, colour bar) and
    return its path: the one drawing of every explaining model's heatmaps."""
    rows, cols = slice_image.shape
    width, height, scale = _scaled_size(rows, cols)
    image = Image.fromarray(blend(slice_image, native_map), "RGB").resize(
        (width, height), Image.Resampling.BILINEAR
    )
    title_lines = wrap(label.title, _font(16), width + LEGEND_PX - 12)
    subtitle_lines = wrap(label.subtitle, _font(12), width + LEGEND_PX - 12)
    top = 4 + 20 * len(title_lines) + 15 * len(subtitle_lines) + 5  # the header's height
    canvas = Image.new("RGB", (width + LEGEND_PX, height + top), (0, 0, 0))
    canvas.paste(image, (0, top))
    draw = ImageDraw.Draw(canvas)
    y_text = 4
    for line in title_lines:
        draw.text((6, y_text), line, fill=(255, 255, 255), font=_font(16))
        y_text += 20
    for line in subtitle_lines:
        draw.text((6, y_text), line, fill=(190, 190, 190), font=_font(12))
        y_text += 15
    for letter, x, y in letters(width, height):
        draw.text((x, y + top), letter, fill=(255, 255, 0), font=_font(14))

    if peak_ij is not None:
        y = (peak_ij[0] + 0.5) * scale + top
        x = (peak_ij[1] + 0.5) * scale
        r = 7
        draw.line([(x - r, y), (x + r, y)], fill=(0, 255, 255), width=2)
        draw.line([(x, y - r), (x, y + r)], fill=(0, 255, 255), width=2)

    # Colour bar: relative saliency within this map.
    bar_top, bar_bottom = top + 24, top + height - 24
    bar_x0, bar_x1 = width + 12, width + 28
    canvas.paste(_colour_bar(max(bar_bottom - bar_top, 1), bar_x1 - bar_x0), (bar_x0, bar_top))
    small = _font(11)
    draw.text((bar_x0 - 4, bar_top - 16), "high", fill=(255, 255, 255), font=small)
    draw.text((bar_x0 - 2, bar_bottom + 4), "low", fill=(255, 255, 255), font=small)
    draw.text((bar_x1 + 3, (bar_top + bar_bottom) / 2 - 6), "rel.", fill=(190, 190, 190), font=small)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out_path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return out_path


def render_overlay(
    slice_image: NDArray[np.floating],
    native_map: NDArray[np.floating],
    placement: CropPlacement,
    peak_ij: tuple[int, int] | None,
    label: OverlayLabel,
    out_path: Path,
) -> Path:
    """Write the overlay PNG of an axial heatmap (directions from the slice's frame); its path."""
    directions = _directions(placement)

    def letters(width: int, height: int) -> Iterable[tuple[str, float, float]]:
        centre = np.array([height / 2.0, width / 2.0])
        reach = 0.46 * min(width, height)
        for letter, d in directions.items():
            y, x = centre + d * reach
            yield letter, float(x) - 4, float(y) - 7

    return draw_overlay(slice_image, native_map, peak_ij, label, letters, out_path)
