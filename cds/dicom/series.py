"""Group instance headers into stacks: sets of parallel, same-sized slices sorted along their normal.

A DICOM series is not always one volume. Lumbar axial series often hold several blocks, each angled
along one disc (different orientations), or blocks with the same orientation separated by gaps;
multi-echo series repeat positions. So a series is split by orientation, matrix size, pixel spacing
and echo time, then at clear gaps (> 1.5x the usual step); what remains irregular is reported as
inconsistent spacing rather than silently resampled.

Slices are sorted by their position along the plane normal (ImagePositionPatient . normal), never by
InstanceNumber, which scanners and exports number in either direction or not at all.
A stack that cannot become a volume keeps its reason in `problem`; it is raised only if the stack
is chosen, so a broken localizer does not reject a good study.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from statistics import median

import numpy as np
from numpy.typing import NDArray

from cds.dicom.errors import IngestKind, ingest_error
from cds.dicom.geometry import Orientation, Plane, plane_affine
from cds.dicom.headers import InstanceHeader
from cds.errors import IngestError

ORIENTATION_TOLERANCE_DEG = 1.0
GAP_FACTOR = 1.5
DUPLICATE_MM = 0.01


def step_tolerance_mm(step_mm: float) -> float:
    """How far a slice step may deviate from the stack's step: 5 % or 0.1 mm, whichever is larger."""
    return max(0.1, 0.05 * step_mm)


@dataclass(frozen=True, eq=False)
class Stack:
    """Slices of one series that form one regular volume (or the reason they cannot)."""

    series_uid: str
    headers: tuple[InstanceHeader, ...]
    orientation: Orientation | None
    step: tuple[float, float, float] | None  # patient-space vector from slice k to k + 1
    part: int = 0  # > 0 when a series was split into several stacks
    problem: IngestError | None = None

    @property
    def first(self) -> InstanceHeader:
        return self.headers[0]

    @property
    def n_slices(self) -> int:
        return len(self.headers)

    @property
    def description(self) -> str:
        return self.first.series_description

    @property
    def plane(self) -> Plane | None:
        return self.orientation.plane if self.orientation else None

    @property
    def slice_spacing_mm(self) -> float | None:
        if self.step is None or self.orientation is None:
            return None
        return float(abs(np.dot(self.step, self.orientation.normal)))

    def affine(self) -> NDArray[np.float64]:
        if self.problem is not None:
            raise self.problem
        assert self.orientation is not None and self.step is not None
        first = self.first
        assert first.position is not None and first.pixel_spacing is not None
        return plane_affine(
            self.orientation, np.asarray(first.position), first.pixel_spacing, np.asarray(self.step)
        )


def group_stacks(headers: Iterable[InstanceHeader]) -> list[Stack]:
    by_series: dict[str, list[InstanceHeader]] = {}
    for h in headers:
        by_series.setdefault(h.series_uid, []).append(h)
    stacks: list[Stack] = []
    for series_uid, members in by_series.items():
        stacks.extend(_series_stacks(series_uid, members))
    return stacks


def _series_stacks(series_uid: str, members: list[InstanceHeader]) -> list[Stack]:
    bad = [h for h in members if _geometry_of(h) is None]
    good = [h for h in members if _geometry_of(h) is not None]
    stacks: list[Stack] = []
    if bad:
        stacks.append(Stack(series_uid, tuple(bad), None, None, problem=_geometry_problem(bad)))
    groups: list[tuple[Orientation, tuple[object, ...], list[InstanceHeader]]] = []
    for h in good:
        orientation = _geometry_of(h)
        assert orientation is not None
        key = (h.rows, h.cols, tuple(round(v, 3) for v in h.pixel_spacing or ()))
        for rep, rep_key, items in groups:
            if rep_key == key and rep.angle_to(orientation) < ORIENTATION_TOLERANCE_DEG:
                items.append(h)
                break
        else:
            groups.append((orientation, key, [h]))
    for orientation, _key, items in groups:
        stacks.extend(_split_echoes(series_uid, orientation, items))
    if len(stacks) > 1:
        return [replace(stack, part=i + 1) for i, stack in enumerate(stacks)]
    return stacks


def _split_echoes(series_uid: str, orientation: Orientation, items: list[InstanceHeader]) -> list[Stack]:
    """Multi-echo series repeat every position once per echo: one stack per echo time."""
    normal = orientation.normal
    depth = [float(np.dot(h.position or (0, 0, 0), normal)) for h in items]
    rounded = [round(d / DUPLICATE_MM) for d in depth]
    if len(set(rounded)) < len(rounded):
        echoes = sorted({h.echo_time for h in items}, key=lambda e: (e is None, e or 0.0))
        if len(echoes) > 1:
            out: list[Stack] = []
            for echo in echoes:
                out.extend(_split_gaps(series_uid, orientation, [h for h in items if h.echo_time == echo]))
            return out
    return _split_gaps(series_uid, orientation, items)


def _split_gaps(series_uid: str, orientation: Orientation, items: list[InstanceHeader]) -> list[Stack]:
    normal = orientation.normal
    ordered = sorted(items, key=lambda h: float(np.dot(h.position or (0, 0, 0), normal)))
    depth = np.array([np.dot(h.position or (0, 0, 0), normal) for h in ordered], dtype=np.float64)
    if len(ordered) == 1:
        return [_single_slice_stack(series_uid, orientation, ordered[0])]
    steps = np.diff(depth)
    if np.any(steps < DUPLICATE_MM):
        return [_broken(series_uid, orientation, ordered, "has several slices at the same position")]
    usual = float(median(steps.tolist()))
    tol = step_tolerance_mm(usual)
    irregular = np.abs(steps - usual) > tol
    if not irregular.any():
        return [_regular_stack(series_uid, orientation, ordered)]
    if np.all(steps[irregular] > GAP_FACTOR * usual):
        runs: list[list[InstanceHeader]] = [[ordered[0]]]
        for h, gap in zip(ordered[1:], irregular, strict=True):
            if gap:
                runs.append([])
            runs[-1].append(h)
        return [
            _regular_stack(series_uid, orientation, run)
            if len(run) > 1
            else _single_slice_stack(series_uid, orientation, run[0])
            for run in runs
        ]
    return [
        _broken(
            series_uid,
            orientation,
            ordered,
            f"has irregular slice spacing ({steps.min():.2f} to {steps.max():.2f} mm, usual {usual:.2f} mm)",
        )
    ]


def _regular_stack(series_uid: str, orientation: Orientation, ordered: Sequence[InstanceHeader]) -> Stack:
    pos = np.array([h.position for h in ordered], dtype=np.float64)
    step = (pos[-1] - pos[0]) / (len(ordered) - 1)
    deviation = np.linalg.norm(np.diff(pos, axis=0) - step, axis=1)
    spacing = float(abs(step @ orientation.normal))
    if float(deviation.max()) > step_tolerance_mm(spacing):
        return _broken(series_uid, orientation, ordered, "has slices that do not lie on a regular grid")
    return Stack(series_uid, tuple(ordered), orientation, (float(step[0]), float(step[1]), float(step[2])))


def _single_slice_stack(series_uid: str, orientation: Orientation, h: InstanceHeader) -> Stack:
    """One slice: its extent along the normal comes from SpacingBetweenSlices or SliceThickness."""
    thickness = h.spacing_between_slices or h.slice_thickness or 1.0
    step = orientation.normal * abs(thickness)
    return Stack(series_uid, (h,), orientation, (float(step[0]), float(step[1]), float(step[2])))


def _broken(series_uid: str, orientation: Orientation, ordered: Sequence[InstanceHeader], why: str) -> Stack:
    error = ingest_error(IngestKind.INCONSISTENT_SPACING, f"series '{ordered[0].series_description}' {why}")
    return Stack(series_uid, tuple(ordered), orientation, None, problem=error)


def _geometry_problem(bad: Sequence[InstanceHeader]) -> IngestError:
    description = bad[0].series_description
    if any(h.frames > 1 for h in bad):  # enhanced MR keeps geometry in per-frame functional groups
        return ingest_error(
            IngestKind.UNSUPPORTED_IMAGE,
            f"series '{description}' is enhanced multi-frame MR; single-frame MR images are supported",
        )
    return ingest_error(
        IngestKind.BAD_GEOMETRY, f"series '{description}' lacks valid orientation, position or pixel spacing"
    )


def _geometry_of(h: InstanceHeader) -> Orientation | None:
    if h.orientation is None or h.position is None or h.pixel_spacing is None:
        return None
    if not all(np.isfinite(h.position)) or min(h.pixel_spacing) <= 0 or not all(np.isfinite(h.pixel_spacing)):
        return None
    try:
        return Orientation.from_iop(h.orientation)
    except ValueError:
        return None
