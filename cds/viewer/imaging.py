"""What the page shows of the images: one sagittal panel and one axial panel per analysed level.

Built from the artifact manifest only (no pixels are read to lay out a page). Every overlay has
a text legend, and every drawn measurement is listed with its value, its colour's name and the
slice it is drawn on, so nothing is conveyed by colour alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from cds.domain import Level, MeasurementName, Side
from cds.viewer import artifacts as art
from cds.viewer import render

COLOUR_NAMES = {
    render.SKY_BLUE: "blue",
    render.ORANGE: "orange",
    render.BLUISH_GREEN: "green",
    render.YELLOW: "yellow",
    render.VERMILLION: "red-orange",
    render.REDDISH_PURPLE: "pink",
    render.BLUE: "dark blue",
    render.WHITE: "white",
}


def _css(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


@dataclass(frozen=True)
class LegendItem:
    text: str
    colour: str  # CSS colour of the swatch
    colour_name: str
    row: int | None = None  # axial: the slice (row) it is drawn on


@dataclass(frozen=True)
class OverlayToggle:
    key: str
    label: str
    legend: tuple[LegendItem, ...]


@dataclass(frozen=True)
class Preset:
    key: str
    label: str


PRESETS = tuple(Preset(p.value, p.window.label) for p in render.WindowPreset)


@dataclass(frozen=True)
class SagittalPanel:
    overlays: tuple[OverlayToggle, ...]
    width: int
    height: int
    slice_text: str


@dataclass(frozen=True)
class AxialPanel:
    level: Level
    slices: tuple[int, ...]  # 1-based slice numbers in the series
    default_row: int
    width: int
    height: int
    overlays: tuple[OverlayToggle, ...]
    measurements: tuple[LegendItem, ...]
    has_area: bool = False  # the dural sac area is among the drawn measurements (its outline)


@dataclass(frozen=True)
class ImagesView:
    available: bool
    why_not: str | None = None
    sagittal: SagittalPanel | None = None
    axial: tuple[AxialPanel, ...] = ()


def _measurement_text(m: art.DrawnMeasurement) -> str:
    side = f" ({m.side.value})" if m.side in (Side.LEFT, Side.RIGHT) else ""
    value = render.short_value(m.name, m.value)
    return f"{m.name.display}{side}: {value}"


def _sagittal(info: art.SagittalInfo) -> SagittalPanel:
    h, w = render.display_size(info.shape)
    seg_legend = tuple(
        LegendItem(text, _css(colour), COLOUR_NAMES[colour])
        for text, colour in (
            ("disc", render.SKY_BLUE),
            ("vertebral body", render.ORANGE),
            ("spinal canal", render.BLUISH_GREEN),
        )
    )
    level_legend = (
        LegendItem("level labels at the disc centres", _css(render.WHITE), "white"),
        LegendItem("position of each level's axial slice shown below", _css(render.YELLOW), "yellow"),
    )
    return SagittalPanel(
        overlays=(
            OverlayToggle(render.Overlay.SEGMENTATION.value, "Segmentation", seg_legend),
            OverlayToggle(render.Overlay.LEVELS.value, "Level labels and slice positions", level_legend),
        ),
        width=w,
        height=h,
        slice_text=f"mid-sagittal T2, slice {info.slice_index + 1}; anterior on the left",
    )


def _axial(info: art.AxialInfo) -> AxialPanel:
    h, w = render.display_size(info.image_shape)
    items = []
    for m in info.measurements:
        colour = render.measurement_colour(m)
        if m.name is MeasurementName.DSCA_MM2:
            items.append(
                LegendItem(_measurement_text(m), _css(colour), f"{COLOUR_NAMES[colour]} outline", m.row)
            )
        elif len(m.points) >= 2:
            items.append(
                LegendItem(_measurement_text(m), _css(colour), f"{COLOUR_NAMES[colour]} line", m.row)
            )
        else:  # an area without an outline of its own (e.g. the foramen): the value, nothing drawn
            items.append(LegendItem(_measurement_text(m), "transparent", "not drawn", m.row))
    return AxialPanel(
        level=info.level,
        slices=tuple(k + 1 for k in info.slice_indices),
        default_row=info.default_row,
        width=w,
        height=h,
        overlays=(
            OverlayToggle(
                render.Overlay.CONTOUR.value,
                "Dural sac outline",
                (LegendItem("dural sac (what the area counts)", _css(render.SAC_COLOUR), "yellow"),),
            ),
            OverlayToggle(render.Overlay.MEASUREMENTS.value, "Measurements", ()),
        ),
        measurements=tuple(items),
        has_area=any(m.name is MeasurementName.DSCA_MM2 for m in info.measurements),
    )


def build_images(manifest: art.Manifest | None, why_not: str | None = None) -> ImagesView:
    if manifest is None or (manifest.sagittal is None and not manifest.axial):
        return ImagesView(False, why_not or "No images were stored with this analysis.")
    return ImagesView(
        True,
        sagittal=_sagittal(manifest.sagittal) if manifest.sagittal else None,
        axial=tuple(_axial(a) for _, a in sorted(manifest.axial.items(), key=lambda kv: kv[0].index)),
    )
