"""The overlay PNG: its size, its header (wrapped, never cut) and its blend of map and slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from cds.explain import gradcam_render as gr


def _letters(width: int, height: int) -> list[tuple[str, float, float]]:
    return [("H", width / 2, 4)]


def test_overlay_is_at_least_min_size_and_wraps_a_long_subtitle(tmp_path: Path) -> None:
    slice_image = np.random.default_rng(0).random((256, 200)).astype(np.float32) * 800
    native = np.zeros((256, 200), np.float32)
    native[100:120, 90:110] = 1.0
    short = gr.OverlayLabel("L4-L5 central canal stenosis: severe", "Grad-CAM")
    long = gr.OverlayLabel("L4-L5 central canal stenosis: severe", "Grad-CAM of the model's output " * 4)
    a = Image.open(gr.draw_overlay(slice_image, native, (110, 100), short, _letters, tmp_path / "a.png"))
    b = Image.open(gr.draw_overlay(slice_image, native, (110, 100), long, _letters, tmp_path / "b.png"))
    width, height, scale = gr._scaled_size(256, 200)
    assert (height, width) == (384, 300) and scale == 1.5  # longer side to MIN_IMAGE_PX, not x2
    assert a.size[0] == b.size[0] == width + gr.LEGEND_PX
    assert b.size[1] > a.size[1] > height  # the long subtitle took more header lines
    lines = gr.wrap(long.subtitle, gr._font(12), width + gr.LEGEND_PX - 12)
    assert len(lines) > 1 and " ".join(lines) == " ".join(long.subtitle.split())
    assert all(gr._font(12).getlength(line) <= width + gr.LEGEND_PX - 12 for line in lines)


def test_blend_colours_only_where_the_map_is_shown() -> None:
    slice_image = np.full((20, 20), 100.0, np.float32)
    slice_image[0, 0] = 0.0
    native = np.zeros((20, 20), np.float32)
    native[5, 5] = 1.0
    native[6, 6] = gr.SHOW_ABOVE / 2  # below the threshold: stays grey
    rgb = gr.blend(slice_image, native)
    assert rgb.shape == (20, 20, 3)
    assert len(set(rgb[6, 6].tolist())) == 1 and len(set(rgb[10, 10].tolist())) == 1
    assert len(set(rgb[5, 5].tolist())) > 1  # coloured
