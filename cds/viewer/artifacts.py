"""What the analysis job leaves on disk for the viewer, and how the web process reads it back.

Why files: the web process must never run the models (no torch), yet the clinician has to see
what the models saw. So the ANALYZE job, which has the images and the masks in memory anyway,
writes the few slices the report shows, their masks and the measurement geometry under
``data_dir/artifacts/<analysis_id>/viewer/``; the web process only reads them (NumPy + Pillow).

Layout (format 1):

* ``manifest.json`` -- small, read for every page: which views exist, slice counts, level marks,
  and the drawn measurements (name, side, value, points);
* ``sagittal.npz`` -- ``image`` (H, W) float16, normalised so the 1st..99th percentile of the
  tissue maps to 0..1, and ``labels`` (H, W) uint8 (0 background, 1 disc, 2 vertebra, 3 canal),
  oriented head up, anterior left (the segmentation's input contract);
* ``axial_<level>.npz`` -- ``images`` (n, H, W) float16 normalised canonical slices (rows
  anterior -> posterior, columns patient right -> left: the radiological display convention)
  and ``sac`` (n, 2H, 2W) uint8, the dural sac mask on the 2x grid the areas were measured on.

Points are (row, col) pixels of the grid the mask lives on (sagittal: the image grid; axial:
the 2x measurement grid).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cds.domain import Level, MeasurementName, Side

FORMAT = 1
MANIFEST = "manifest.json"
SAGITTAL_FILE = "sagittal.npz"
#: Sagittal label values (the segmentation network's class order).
SAG_DISC, SAG_VERTEBRA, SAG_CANAL = 1, 2, 3

_ANALYSIS_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")

Point = tuple[float, float]


class ArtifactsMissing(LookupError):
    """The analysis has no (readable) viewer artifacts: e.g. analysed before they existed."""


def artifacts_root(data_dir: Path) -> Path:
    return Path(data_dir) / "artifacts"


def viewer_dir(data_dir: Path, analysis_id: str) -> Path:
    """Where one analysis's viewer files live. The id is checked: it becomes a path component."""
    if not _ANALYSIS_ID.match(analysis_id) or analysis_id in {".", ".."}:
        raise ValueError("analysis id is not a safe path component")
    return artifacts_root(data_dir) / analysis_id / "viewer"


def axial_file(level: Level) -> str:
    return f"axial_{level.value}.npz"


@dataclass(frozen=True)
class LevelMark:
    """A disc level's label position on the sagittal image."""

    level: Level
    point: Point


@dataclass(frozen=True)
class SliceLine:
    """Where a level's shown axial slice cuts the sagittal image (two end points)."""

    level: Level
    start: Point
    end: Point


@dataclass(frozen=True)
class DrawnMeasurement:
    """A measurement of the findings, drawable on one axial slice (``row`` of the level's stack).

    Areas carry no points: the mask contour on that slice is the measurement.
    """

    name: MeasurementName
    side: Side | None
    value: float
    row: int
    points: tuple[Point, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name.value,
            "side": self.side.value if self.side else None,
            "value": float(self.value),  # unrounded: the label must print exactly as the table does
            "row": int(self.row),
            "points": [[round(float(r), 2), round(float(c), 2)] for r, c in self.points],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DrawnMeasurement:
        return cls(
            name=MeasurementName(data["name"]),
            side=Side(data["side"]) if data.get("side") else None,
            value=float(data["value"]),
            row=int(data["row"]),
            points=tuple((float(p[0]), float(p[1])) for p in data.get("points", ())),
        )


@dataclass(frozen=True)
class SagittalInfo:
    series_uid: str
    slice_index: int
    shape: tuple[int, int]
    pixel_mm: tuple[float, float]
    levels: tuple[LevelMark, ...] = ()
    slice_lines: tuple[SliceLine, ...] = ()


@dataclass(frozen=True)
class AxialInfo:
    level: Level
    series_uid: str
    slice_indices: tuple[int, ...]
    default_row: int
    image_shape: tuple[int, int]
    image_pixel_mm: float
    measurements: tuple[DrawnMeasurement, ...] = ()

    @property
    def mask_scale(self) -> int:
        """How many mask-grid pixels per image pixel (the measurement grid is finer)."""
        return 2


@dataclass(frozen=True)
class Manifest:
    """Everything a page needs to lay out the images, without reading any pixels."""

    sagittal: SagittalInfo | None = None
    axial: Mapping[Level, AxialInfo] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        sag = None
        if self.sagittal is not None:
            s = self.sagittal
            sag = {
                "series_uid": s.series_uid,
                "slice_index": s.slice_index,
                "shape": list(s.shape),
                "pixel_mm": list(s.pixel_mm),
                "levels": [{"level": m.level.value, "point": list(m.point)} for m in s.levels],
                "slice_lines": [
                    {"level": ln.level.value, "start": list(ln.start), "end": list(ln.end)}
                    for ln in s.slice_lines
                ],
            }
        return {
            "format": FORMAT,
            "sagittal": sag,
            "axial": {
                lv.value: {
                    "series_uid": a.series_uid,
                    "slice_indices": list(a.slice_indices),
                    "default_row": a.default_row,
                    "image_shape": list(a.image_shape),
                    "image_pixel_mm": a.image_pixel_mm,
                    "measurements": [m.to_json() for m in a.measurements],
                }
                for lv, a in sorted(self.axial.items(), key=lambda kv: kv[0].index)
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        if data.get("format") != FORMAT:
            raise ArtifactsMissing(f"unknown viewer artifact format {data.get('format')!r}")
        sag = None
        if data.get("sagittal"):
            s = data["sagittal"]
            sag = SagittalInfo(
                series_uid=str(s["series_uid"]),
                slice_index=int(s["slice_index"]),
                shape=(int(s["shape"][0]), int(s["shape"][1])),
                pixel_mm=(float(s["pixel_mm"][0]), float(s["pixel_mm"][1])),
                levels=tuple(
                    LevelMark(Level(m["level"]), (float(m["point"][0]), float(m["point"][1])))
                    for m in s.get("levels", ())
                ),
                slice_lines=tuple(
                    SliceLine(
                        Level(ln["level"]),
                        (float(ln["start"][0]), float(ln["start"][1])),
                        (float(ln["end"][0]), float(ln["end"][1])),
                    )
                    for ln in s.get("slice_lines", ())
                ),
            )
        axial = {
            Level(lv): AxialInfo(
                level=Level(lv),
                series_uid=str(a["series_uid"]),
                slice_indices=tuple(int(k) for k in a["slice_indices"]),
                default_row=int(a["default_row"]),
                image_shape=(int(a["image_shape"][0]), int(a["image_shape"][1])),
                image_pixel_mm=float(a["image_pixel_mm"]),
                measurements=tuple(DrawnMeasurement.from_json(m) for m in a.get("measurements", ())),
            )
            for lv, a in dict(data.get("axial", {})).items()
        }
        return cls(sagittal=sag, axial=axial)


@dataclass(frozen=True)
class SagittalPixels:
    image: np.ndarray  # (H, W) float32, normalised
    labels: np.ndarray  # (H, W) uint8


@dataclass(frozen=True)
class AxialPixels:
    images: np.ndarray  # (n, H, W) float32, normalised
    sac: np.ndarray  # (n, 2H, 2W) bool


# --- writing (the analysis job) ------------------------------------------------------------------


def _atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_artifacts(
    out_dir: Path,
    manifest: Manifest,
    sagittal: SagittalPixels | None,
    axial: Mapping[Level, AxialPixels],
) -> None:
    """Pixels first, manifest last: a manifest on disk means its files are complete."""
    if sagittal is not None:
        _atomic_write(
            out_dir / SAGITTAL_FILE,
            lambda h: np.savez_compressed(
                h, image=sagittal.image.astype(np.float16), labels=sagittal.labels.astype(np.uint8)
            ),
        )
    for level, px in axial.items():
        _atomic_write(
            out_dir / axial_file(level),
            lambda h, px=px: np.savez_compressed(
                h, images=px.images.astype(np.float16), sac=px.sac.astype(np.uint8)
            ),
        )
    body = json.dumps(manifest.to_json(), indent=1).encode()
    _atomic_write(out_dir / MANIFEST, lambda h: h.write(body))


# --- reading (the web process) --------------------------------------------------------------------


def read_manifest(out_dir: Path) -> Manifest:
    path = out_dir / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ArtifactsMissing("no viewer artifacts for this analysis") from exc
    except (OSError, ValueError) as exc:
        raise ArtifactsMissing("viewer artifacts are unreadable") from exc
    try:
        return Manifest.from_json(data)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ArtifactsMissing("viewer artifacts are malformed") from exc


def _load(path: Path) -> Any:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError as exc:
        raise ArtifactsMissing(f"{path.name} missing") from exc
    except (OSError, ValueError) as exc:
        raise ArtifactsMissing(f"{path.name} unreadable") from exc


def read_sagittal(out_dir: Path) -> SagittalPixels:
    with _load(out_dir / SAGITTAL_FILE) as data:
        return SagittalPixels(data["image"].astype(np.float32), data["labels"].astype(np.uint8))


def read_axial(out_dir: Path, level: Level) -> AxialPixels:
    with _load(out_dir / axial_file(level)) as data:
        return AxialPixels(data["images"].astype(np.float32), data["sac"].astype(bool))
