"""Server-side PNGs of the viewer: a greyscale base image per window preset and transparent overlays.

Why layers: the page stacks a base image and overlay images in one box, so switching an overlay
on or off is instant and costs no request (important on a slow network), and a window preset
change fetches one small greyscale PNG. Overlays are drawn at twice the base resolution so lines
and labels stay sharp when the browser scales the stack up.

Colours follow the Okabe-Ito palette (distinguishable with the common colour-vision
deficiencies), and every overlay is also described in text on the page.

NumPy + Pillow only: this runs in the web process (no torch, no pipeline import).
"""

from __future__ import annotations

import functools
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cds.domain import MeasurementName, Side
from cds.viewer import artifacts as art

#: Overlays are drawn at this multiple of the base image's display size.
OVERLAY_SCALE = 2
#: Part of every cached file name: a drawing change must not serve PNGs rendered the old way.
RENDER_VERSION = 3
#: Base images smaller than this (longest side, px) are upsampled for display.
MIN_DISPLAY_PX = 320


@dataclass(frozen=True)
class Window:
    label: str
    level: float  # centre, in normalised units (1st..99th tissue percentile -> 0..1)
    width: float


class WindowPreset(StrEnum):
    """MR intensities have no absolute scale, so presets act on the normalised image."""

    STANDARD = "standard"
    CONTRAST = "contrast"
    BRIGHT = "bright"

    @property
    def window(self) -> Window:
        return _WINDOWS[self]


_WINDOWS = {
    WindowPreset.STANDARD: Window("Standard", 0.5, 1.0),
    WindowPreset.CONTRAST: Window("High contrast (soft tissue)", 0.45, 0.55),
    WindowPreset.BRIGHT: Window("Wide (bright fluid detail)", 0.7, 1.6),
}


class Overlay(StrEnum):
    SEGMENTATION = "segmentation"  # sagittal: disc, vertebra, canal masks
    LEVELS = "levels"  # sagittal: level labels and the positions of the axial slices
    CONTOUR = "contour"  # axial: dural sac contour
    MEASUREMENTS = "measurements"  # axial: measurement lines and values


SAGITTAL_OVERLAYS = (Overlay.SEGMENTATION, Overlay.LEVELS)
AXIAL_OVERLAYS = (Overlay.CONTOUR, Overlay.MEASUREMENTS)

# Okabe-Ito colours (RGB) and the alpha used for filled masks.
SKY_BLUE = (86, 180, 233)
ORANGE = (230, 159, 0)
BLUISH_GREEN = (0, 158, 115)
YELLOW = (240, 228, 66)
VERMILLION = (213, 94, 0)
REDDISH_PURPLE = (204, 121, 167)
BLUE = (0, 114, 178)
WHITE = (255, 255, 255)
FILL_ALPHA = 80

SAGITTAL_COLOURS = {art.SAG_DISC: SKY_BLUE, art.SAG_VERTEBRA: ORANGE, art.SAG_CANAL: BLUISH_GREEN}
SAC_COLOUR = YELLOW
AP_COLOUR = SKY_BLUE
RECESS_COLOURS = {Side.LEFT: REDDISH_PURPLE, Side.RIGHT: VERMILLION}
FORAMEN_COLOURS = {Side.LEFT: BLUE, Side.RIGHT: BLUISH_GREEN}
SLICE_LINE_COLOUR = YELLOW

#: Short labels drawn on the image (the page's legend spells them out).
SHORT_NAMES = {
    MeasurementName.DSCA_MM2: "DSCA",
    MeasurementName.AP_DIAMETER_MM: "AP",
    MeasurementName.LATERAL_RECESS_DEPTH_MM: "recess",
    MeasurementName.DISC_HEIGHT_MM: "disc",
    MeasurementName.FORAMINAL_AREA_RATIO: "foramen",
}


def short_value(name: MeasurementName, value: float) -> str:
    """Printed exactly as the report's tables print it (one formatter for both)."""
    from cds.viewer.page import format_measurement

    return format_measurement(name, value)


def measurement_colour(m: art.DrawnMeasurement) -> tuple[int, int, int]:
    if m.name is MeasurementName.DSCA_MM2:
        return SAC_COLOUR
    if m.name is MeasurementName.FORAMINAL_AREA_RATIO and m.side is not None:
        return FORAMEN_COLOURS.get(m.side, WHITE)
    if m.side is not None:
        return RECESS_COLOURS.get(m.side, WHITE)
    return AP_COLOUR


def display_factor(shape: tuple[int, int]) -> int:
    """Integer upsampling so the base image's longest side reaches MIN_DISPLAY_PX."""
    longest = max(shape)
    return max(1, -(-MIN_DISPLAY_PX // max(1, longest)))


# --- base images ---------------------------------------------------------------------------------


def windowed(image: np.ndarray, preset: WindowPreset) -> np.ndarray:
    w = preset.window
    lo = w.level - w.width / 2.0
    out = np.clip((np.asarray(image, dtype=np.float32) - lo) / w.width, 0.0, 1.0)
    return np.round(out * 255.0).astype(np.uint8)


def base_png(image: np.ndarray, preset: WindowPreset, size: tuple[int, int]) -> Image.Image:
    """Greyscale 8-bit image at display ``size`` (rows, cols)."""
    img = Image.fromarray(windowed(image, preset), mode="L")
    if img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return img


# --- overlays ------------------------------------------------------------------------------------


#: A system font with the "²" glyph, when installed (fonts-dejavu-core comes with chromium's deps);
#: Pillow's bundled font lacks it, so units are then written "mm2".
_FONT_FILES = ("DejaVuSans-Bold.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")


@functools.lru_cache(maxsize=16)
def _font(px: int) -> tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, bool]:
    """(font, has the superscript-two glyph)."""
    for name in _FONT_FILES:
        try:
            return ImageFont.truetype(name, px), True
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=px), False
    except (TypeError, OSError):  # Pillow without FreeType: bitmap font
        return ImageFont.load_default(), False


def _label(
    draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, colour: tuple[int, int, int], px: int
) -> None:
    """Text with a dark outline: readable on bright fluid and on dark bone alike."""
    font, superscripts = _font(px)
    if not superscripts:
        text = text.replace("²", "2")
    draw.text(
        xy, text, fill=(*colour, 255), font=font, stroke_width=max(2, px // 7), stroke_fill=(0, 0, 0, 255)
    )


def spread_labels(ys: Sequence[float], gap: float) -> list[float]:
    """Label rows moved apart (downwards, in order) so no two are closer than ``gap``."""
    out: list[float] = []
    for y in ys:
        out.append(max(y, out[-1] + gap) if out else y)
    return out


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of the mask with a 4-neighbour outside it (NumPy only)."""
    m = np.asarray(mask, dtype=bool)
    padded = np.pad(m, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return m & ~interior


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    img = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255, mode="L")
    img = img.resize((size[1], size[0]), Image.Resampling.NEAREST)
    return np.asarray(img) > 127


def _thicken(edge: np.ndarray) -> np.ndarray:
    out = edge.copy()
    out[1:, :] |= edge[:-1, :]
    out[:, 1:] |= edge[:, :-1]
    return out


def sagittal_overlay(
    overlay: Overlay, px: art.SagittalPixels, info: art.SagittalInfo, size: tuple[int, int]
) -> Image.Image:
    """RGBA overlay at ``size`` (rows, cols) for the sagittal image."""
    rgba = np.zeros((*size, 4), dtype=np.uint8)
    sy = size[0] / px.labels.shape[0]
    sx = size[1] / px.labels.shape[1]
    if overlay is Overlay.SEGMENTATION:
        for value, colour in SAGITTAL_COLOURS.items():
            mask = _resize_mask(px.labels == value, size)
            rgba[mask] = (*colour, FILL_ALPHA)
            rgba[_thicken(_boundary(mask))] = (*colour, 230)
        return Image.fromarray(rgba, mode="RGBA")
    img = Image.fromarray(rgba, mode="RGBA")
    draw = ImageDraw.Draw(img)
    if overlay is Overlay.LEVELS:
        font_px = max(12, size[0] // 28)
        for line in info.slice_lines:
            (r0, c0), (r1, c1) = line.start, line.end
            draw.line([(c0 * sx, r0 * sy), (c1 * sx, r1 * sy)], fill=(*SLICE_LINE_COLOUR, 230), width=3)
        marks = sorted(info.levels, key=lambda m: m.point[0])
        ys = spread_labels([m.point[0] * sy for m in marks], font_px * 1.3)
        left = min((m.point[1] * sx for m in marks), default=0.0)
        tx = max(2.0, left - font_px * 6.5)
        for mark, ty in zip(marks, ys, strict=True):
            r, c = mark.point
            x, y = c * sx, r * sy
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], outline=(*WHITE, 255), width=2)
            draw.line([(tx + font_px * 3.9, ty), (x - 5, y)], fill=(*WHITE, 220), width=2)
            _label(draw, (tx, ty - font_px * 0.6), mark.level.value, WHITE, font_px)
    return img


def axial_overlay(
    overlay: Overlay,
    px: art.AxialPixels,
    info: art.AxialInfo,
    row: int,
    size: tuple[int, int],
) -> Image.Image:
    """RGBA overlay at ``size`` for slice ``row`` of one level's axial stack."""
    mask_shape = px.sac.shape[1:]
    sy, sx = size[0] / mask_shape[0], size[1] / mask_shape[1]
    font_px = max(12, size[0] // 26)
    if overlay is Overlay.CONTOUR:
        rgba = np.zeros((*size, 4), dtype=np.uint8)
        edge = _thicken(_boundary(_resize_mask(px.sac[row], size)))
        rgba[edge] = (*SAC_COLOUR, 255)
        return Image.fromarray(rgba, mode="RGBA")
    img = Image.new("RGBA", (size[1], size[0]), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    if overlay is not Overlay.MEASUREMENTS:
        return img
    labels = _Labels(draw, size, font_px)
    for m in info.measurements:
        if m.row != row:
            continue
        colour = measurement_colour(m)
        side = {Side.LEFT: "L ", Side.RIGHT: "R "}.get(m.side, "") if m.side else ""
        text = f"{side}{SHORT_NAMES.get(m.name, m.name.value)} {short_value(m.name, m.value)}"
        if m.name is MeasurementName.DSCA_MM2:
            rows, cols = np.nonzero(px.sac[row])
            if rows.size:
                labels.place(float(cols.max()) * sx + 6, float(rows.min()) * sy - font_px * 1.4, text, colour)
            continue
        if len(m.points) < 2:
            continue
        pts = [(c * sx, r * sy) for r, c in m.points]
        draw.line(pts, fill=(*colour, 255), width=3)
        for x, y in (pts[0], pts[-1]):
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(*colour, 255))
        x_end, y_end = pts[-1]
        width = labels.width(text)
        # Patient left is image right: a left-sided label goes right of its line, a right-sided one left.
        tx = x_end - width - 8 if m.side is Side.RIGHT else x_end + 8
        labels.place(tx, y_end + 4, text, colour)
    return img


class _Labels:
    """Places measurement labels inside the image without overlapping each other (moves down)."""

    def __init__(self, draw: ImageDraw.ImageDraw, size: tuple[int, int], font_px: int) -> None:
        self.draw, self.size, self.font_px = draw, size, font_px
        self.boxes: list[tuple[float, float, float, float]] = []

    def width(self, text: str) -> float:
        font, _ = _font(self.font_px)
        left, _, right, _ = self.draw.textbbox((0, 0), text, font=font)
        return float(right - left)

    def place(self, x: float, y: float, text: str, colour: tuple[int, int, int]) -> None:
        w, h = self.width(text), self.font_px * 1.25
        x = min(max(x, 2.0), self.size[1] - w - 2.0)
        y = min(max(y, 2.0), self.size[0] - h - 2.0)
        for _ in range(40):
            if not any(
                x < bx1 and bx0 < x + w and y < by1 and by0 < y + h for bx0, by0, bx1, by1 in self.boxes
            ):
                break
            y = y + h if y + 2 * h < self.size[0] else 2.0
        self.boxes.append((x, y, x + w, y + h))
        _label(self.draw, (x, y), text, colour, self.font_px)


# --- the disk cache -------------------------------------------------------------------------------

_KEY = re.compile(r"^[A-Za-z0-9_.\-]{1,120}$")


@dataclass(frozen=True)
class PngCache:
    """Rendered PNGs kept next to the artifacts (render once, serve many times)."""

    directory: Path

    def get(self, key: str, render: Callable[[], Image.Image]) -> Path:
        if not _KEY.match(key):
            raise ValueError("bad cache key")
        path = self.directory / f"v{RENDER_VERSION}-{key}.png"
        if path.is_file():
            return path
        image = render()
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".png")
        try:
            with os.fdopen(fd, "wb") as handle:
                image.save(handle, format="PNG", optimize=True)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


def display_size(shape: Sequence[int]) -> tuple[int, int]:
    f = display_factor((int(shape[0]), int(shape[1])))
    return int(shape[0]) * f, int(shape[1]) * f


def overlay_size(shape: Sequence[int]) -> tuple[int, int]:
    r, c = display_size(shape)
    return r * OVERLAY_SCALE, c * OVERLAY_SCALE
