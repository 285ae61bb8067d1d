"""Artifact files and PNG rendering (NumPy + Pillow): round trips, layers, cache, safety."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from viewer_support import synthetic_artifacts

from cds.domain import Level
from cds.viewer import artifacts as art
from cds.viewer import render


def test_manifest_round_trip_and_pixels(tmp_path: Path) -> None:
    manifest = synthetic_artifacts(tmp_path, "a-1")
    directory = art.viewer_dir(tmp_path, "a-1")
    assert art.read_manifest(directory) == manifest
    sag = art.read_sagittal(directory)
    assert sag.image.shape == (64, 48) and sag.labels.dtype == np.uint8
    ax = art.read_axial(directory, Level.L4_L5)
    assert ax.images.shape == (2, 40, 40) and ax.sac.shape == (2, 80, 80) and ax.sac.dtype == bool


@pytest.mark.parametrize("analysis_id", ["..", "../x", "a/b", "", "a" * 65, "a\x00"])
def test_viewer_dir_refuses_unsafe_ids(tmp_path: Path, analysis_id: str) -> None:
    with pytest.raises(ValueError):
        art.viewer_dir(tmp_path, analysis_id)


def test_missing_or_foreign_artifacts_are_artifacts_missing(tmp_path: Path) -> None:
    directory = art.viewer_dir(tmp_path, "a-2")
    with pytest.raises(art.ArtifactsMissing):
        art.read_manifest(directory)
    directory.mkdir(parents=True)
    (directory / art.MANIFEST).write_text(json.dumps({"format": 99}))
    with pytest.raises(art.ArtifactsMissing):
        art.read_manifest(directory)
    (directory / art.MANIFEST).write_text("{not json")
    with pytest.raises(art.ArtifactsMissing):
        art.read_manifest(directory)
    with pytest.raises(art.ArtifactsMissing):
        art.read_sagittal(directory)


def test_window_presets_map_the_normalised_range() -> None:
    ramp = np.linspace(0.0, 1.0, 11, dtype=np.float32)
    standard = render.windowed(ramp, render.WindowPreset.STANDARD)
    assert standard[0] == 0 and standard[-1] == 255 and np.all(np.diff(standard.astype(int)) > 0)
    contrast = render.windowed(ramp, render.WindowPreset.CONTRAST)
    assert contrast[1] == 0 and contrast[-2] == 255  # narrower window saturates sooner
    bright = render.windowed(ramp, render.WindowPreset.BRIGHT)
    assert bright[-1] < 255  # the wide window keeps detail in the brightest fluid


def test_sagittal_layers(tmp_path: Path) -> None:
    manifest = synthetic_artifacts(tmp_path, "a-1")
    assert manifest.sagittal is not None
    px = art.read_sagittal(art.viewer_dir(tmp_path, "a-1"))
    size = render.display_size(px.image.shape)
    assert max(size) >= render.MIN_DISPLAY_PX
    base = render.base_png(px.image, render.WindowPreset.STANDARD, size)
    assert base.mode == "L" and base.size == (size[1], size[0])
    osize = render.overlay_size(px.image.shape)
    seg = np.asarray(render.sagittal_overlay(render.Overlay.SEGMENTATION, px, manifest.sagittal, osize))
    assert seg.shape == (*osize, 4)
    scale = osize[0] / 64
    canal_px = seg[int(30 * scale), int(27 * scale)]
    assert tuple(canal_px[:3]) == render.BLUISH_GREEN and canal_px[3] > 0
    assert seg[int(2 * scale), int(2 * scale), 3] == 0  # background stays transparent
    levels = np.asarray(render.sagittal_overlay(render.Overlay.LEVELS, px, manifest.sagittal, osize))
    assert levels[..., 3].sum() > 0


def test_axial_layers_draw_contour_and_lines_on_their_slice(tmp_path: Path) -> None:
    manifest = synthetic_artifacts(tmp_path, "a-1")
    info = manifest.axial[Level.L4_L5]
    px = art.read_axial(art.viewer_dir(tmp_path, "a-1"), Level.L4_L5)
    osize = render.overlay_size(info.image_shape)
    contour = np.asarray(render.axial_overlay(render.Overlay.CONTOUR, px, info, 1, osize))
    drawn = contour[..., 3] > 0
    f = osize[0] / 80
    assert drawn[int(40 * f), int(31 * f) : int(33 * f)].any()  # the outline crosses the sac's edge
    assert not drawn[int(40 * f), int(40 * f)]  # an outline, not a fill
    lines = np.asarray(render.axial_overlay(render.Overlay.MEASUREMENTS, px, info, 1, osize))
    mid = (int(40 * f), int(40 * f))  # on the AP line of row 1
    assert tuple(lines[mid][:3]) == render.AP_COLOUR
    other = np.asarray(render.axial_overlay(render.Overlay.MEASUREMENTS, px, info, 0, osize))
    assert other[mid][3] == 0  # the AP line belongs to row 1 only


def test_spread_labels_keeps_order_and_gap() -> None:
    assert render.spread_labels([10.0, 12.0, 50.0], 8.0) == [10.0, 18.0, 50.0]


def test_png_cache_renders_once_and_refuses_bad_keys(tmp_path: Path) -> None:
    cache = render.PngCache(tmp_path / "render")
    calls = []

    def draw() -> Image.Image:
        calls.append(1)
        return Image.new("L", (4, 4))

    first = cache.get("sag-base-standard", draw)
    assert cache.get("sag-base-standard", draw) == first and len(calls) == 1
    assert first.name.startswith(f"v{render.RENDER_VERSION}-")
    assert not list((tmp_path / "render").glob(".tmp-*"))
    with pytest.raises(ValueError):
        cache.get("../escape", draw)


def test_layers_validate_and_render_once(tmp_path: Path) -> None:
    from cds.viewer.layers import LayerNotFound, axial_layer, sagittal_layer

    synthetic_artifacts(tmp_path, "a-1")
    directory = art.viewer_dir(tmp_path, "a-1")
    first = sagittal_layer(directory, "base", "contrast")
    assert first.name == f"v{render.RENDER_VERSION}-sag-base-contrast.png"
    assert sagittal_layer(directory, "base", "contrast") == first
    assert axial_layer(directory, "L4-L5", 1, "measurements", None).is_file()
    for bad in (
        lambda: sagittal_layer(directory, "base", "lung"),
        lambda: sagittal_layer(directory, "contour", None),  # an axial-only layer
        lambda: axial_layer(directory, "L9-L9", 0, "base", None),
        lambda: axial_layer(directory, "L4-L5", 2, "base", None),  # two slices only
        lambda: axial_layer(directory, "L3-L4", 0, "base", None),  # no such level stored
        lambda: sagittal_layer(art.viewer_dir(tmp_path, "a-2"), "base", None),  # no artifacts
    ):
        with pytest.raises(LayerNotFound):
            bad()
