"""Which PNG file answers an image request: validate the layer, render it once, return the path.

Flask-free so the rules are testable alone; the blueprint only maps LayerNotFound to a 404.
"""

from __future__ import annotations

from pathlib import Path

from cds.domain import Level
from cds.viewer import artifacts as art
from cds.viewer import render

BASE = "base"


class LayerNotFound(LookupError):
    """No such layer for this analysis (unknown name, level, row or preset, or no artifacts)."""


def _preset(value: str | None) -> render.WindowPreset:
    try:
        return render.WindowPreset(value or render.WindowPreset.STANDARD.value)
    except ValueError as exc:
        raise LayerNotFound("unknown window preset") from exc


def _overlay(layer: str, allowed: tuple[render.Overlay, ...]) -> render.Overlay:
    try:
        overlay = render.Overlay(layer)
    except ValueError as exc:
        raise LayerNotFound("unknown layer") from exc
    if overlay not in allowed:
        raise LayerNotFound("layer not drawn on this view")
    return overlay


def sagittal_layer(directory: Path, layer: str, preset: str | None) -> Path:
    try:
        info = art.read_manifest(directory).sagittal
        if info is None:
            raise LayerNotFound("no sagittal view stored")
        cache = render.PngCache(directory / "render")
        if layer == BASE:
            wl = _preset(preset)
            size = render.display_size(info.shape)
            return cache.get(
                f"sag-base-{wl.value}", lambda: render.base_png(art.read_sagittal(directory).image, wl, size)
            )
        overlay = _overlay(layer, render.SAGITTAL_OVERLAYS)
        size = render.overlay_size(info.shape)
        return cache.get(
            f"sag-{overlay.value}",
            lambda: render.sagittal_overlay(overlay, art.read_sagittal(directory), info, size),
        )
    except art.ArtifactsMissing as exc:
        raise LayerNotFound(str(exc)) from exc


def axial_layer(directory: Path, level: str, row: int, layer: str, preset: str | None) -> Path:
    try:
        lv = Level(level)
    except ValueError as exc:
        raise LayerNotFound("unknown level") from exc
    try:
        info = art.read_manifest(directory).axial.get(lv)
        if info is None or not 0 <= row < len(info.slice_indices):
            raise LayerNotFound("no such axial slice")
        cache = render.PngCache(directory / "render")
        if layer == BASE:
            wl = _preset(preset)
            size = render.display_size(info.image_shape)
            return cache.get(
                f"ax-{lv.value}-{row}-base-{wl.value}",
                lambda: render.base_png(art.read_axial(directory, lv).images[row], wl, size),
            )
        overlay = _overlay(layer, render.AXIAL_OVERLAYS)
        size = render.overlay_size(info.image_shape)
        return cache.get(
            f"ax-{lv.value}-{row}-{overlay.value}",
            lambda: render.axial_overlay(overlay, art.read_axial(directory, lv), info, row, size),
        )
    except art.ArtifactsMissing as exc:
        raise LayerNotFound(str(exc)) from exc
