"""Which stacks are the sagittal T2, sagittal T1 and axial T2: geometry first, words second.

Geometry decides the plane (the orientation normal against the patient axes), because series
descriptions are free text in any language and any vendor's abbreviations, and a series called
"T2 SAG" acquired axially exists. Within a plane, the weighting comes from the description when
it says so (T1, T2; STIR/FLAIR/T2* and localizers are something else), and otherwise from the
timing: T2-weighted spin echo has long TE and TR, T1-weighted short TE and TR.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from cds.dicom.errors import IngestKind, ingest_error
from cds.dicom.geometry import Plane
from cds.dicom.headers import InstanceHeader
from cds.dicom.series import Stack


class SeriesKind(StrEnum):
    SAGITTAL_T2 = "sagittal_t2"
    SAGITTAL_T1 = "sagittal_t1"
    AXIAL_T2 = "axial_t2"
    OTHER = "other"


class Weighting(StrEnum):
    T1 = "t1"
    T2 = "t2"
    OTHER = "other"  # STIR, FLAIR, T2*, diffusion, localizers, derived images
    UNKNOWN = "unknown"


_OTHER_WORDS = re.compile(
    r"STIR|TIRM|FLAIR|DWI|DIFF|ADC|TRACE|MYELO|LOCALI[SZ]ER|\bLOC\b|SCOUT|SURVEY|3[ -]?PLANE|"
    r"CALIBRATION|\bCAL\b|T2\*|MEDIC|MERGE|SWI|PERF|\bMIP\b|POST\s*GAD|\+C\b|\bGAD\b|CONTRAST"
)
_T2 = re.compile(r"(?<![0-9])T2(?![0-9*])")
_T1 = re.compile(r"(?<![0-9])T1(?![0-9])")
_FAT_SUPPRESSED = re.compile(r"\bFS\b|FATSAT|FAT SAT|SPAIR|\bSPIR\b|DIXON")
_DERIVED = frozenset({"LOCALIZER", "DERIVED", "MPR", "PROJECTION IMAGE", "REFORMATTED"})


def weighting_of(h: InstanceHeader) -> Weighting:
    if any(t in _DERIVED for t in h.image_type):
        return Weighting.OTHER
    text = f"{h.series_description} {h.protocol_name}".upper().replace("_", " ")
    if _OTHER_WORDS.search(text):
        return Weighting.OTHER
    says_t2, says_t1 = bool(_T2.search(text)), bool(_T1.search(text))
    if says_t2 != says_t1:
        return Weighting.T2 if says_t2 else Weighting.T1
    return _weighting_from_timing(h)


def _weighting_from_timing(h: InstanceHeader) -> Weighting:
    te, tr, ti = h.echo_time, h.repetition_time, h.inversion_time
    if te is None or tr is None:
        return Weighting.UNKNOWN
    if ti is not None and 0 < ti < 300:  # short-tau inversion recovery: fat-suppressed, not plain T2
        return Weighting.OTHER
    if te >= 60 and tr >= 1500:
        return Weighting.T2
    if te <= 30 and tr <= 1200:
        return Weighting.T1
    return Weighting.UNKNOWN


_SAYS_AXIAL = re.compile(r"\bTRA|\bAX|AXIAL|TRANSV|\bTRANS\b")
#: Axial blocks through L5-S1 follow the lordotic disc and can tilt past 45 degrees, where the
#: normal is nearer the anterior-posterior axis than the head-feet axis. Up to this tilt about the
#: left-right axis, a stack the description calls axial/transverse is accepted as axial.
MAX_AXIAL_TILT_DEG = 65.0


def plane_of(stack: Stack) -> Plane | None:
    """The stack's plane: geometry decides, except for steep axial blocks that the words confirm."""
    if stack.orientation is None:
        return None
    plane = stack.orientation.plane
    if plane is Plane.CORONAL:
        n = np.abs(stack.orientation.normal)
        tilt = float(np.degrees(np.arccos(np.clip(n[2], 0.0, 1.0))))
        text = f"{stack.first.series_description} {stack.first.protocol_name}".upper().replace("_", " ")
        if n[0] < 0.5 and tilt <= MAX_AXIAL_TILT_DEG and _SAYS_AXIAL.search(text):
            return Plane.AXIAL
    return plane


def kind_of(stack: Stack) -> SeriesKind:
    weighting = weighting_of(stack.first)
    plane = plane_of(stack)
    if plane is Plane.SAGITTAL and weighting is Weighting.T2:
        return SeriesKind.SAGITTAL_T2
    if plane is Plane.SAGITTAL and weighting is Weighting.T1:
        return SeriesKind.SAGITTAL_T1
    if plane is Plane.AXIAL and weighting is Weighting.T2:
        return SeriesKind.AXIAL_T2
    return SeriesKind.OTHER


@dataclass(frozen=True)
class Selection:
    sagittal_t2: Stack
    sagittal_t1: Stack | None
    axial_t2: tuple[Stack, ...]

    def chosen(self) -> list[tuple[SeriesKind, Stack]]:
        out = [(SeriesKind.SAGITTAL_T2, self.sagittal_t2)]
        if self.sagittal_t1 is not None:
            out.append((SeriesKind.SAGITTAL_T1, self.sagittal_t1))
        out += [(SeriesKind.AXIAL_T2, s) for s in self.axial_t2]
        return out


def _preference(stack: Stack) -> tuple[bool, bool, bool, int, float, int]:
    """Higher is better: usable, multi-slice, not fat-suppressed, more slices, finer pixels, later repeat."""
    h = stack.first
    pixel_area = (h.pixel_spacing[0] * h.pixel_spacing[1]) if h.pixel_spacing else 1e9
    fat_suppressed = bool(_FAT_SUPPRESSED.search(h.series_description.upper().replace("_", " ")))
    return (
        stack.problem is None,
        stack.n_slices > 1,
        not fat_suppressed,
        stack.n_slices,
        -pixel_area,
        h.series_number or 0,
    )


def select_series(stacks: Sequence[Stack]) -> Selection:
    """Choose the stacks to decode. Raises no_sagittal_t2, single_slice, or the chosen stack's problem."""
    kinds = [(kind_of(s), s) for s in stacks]
    sag_t2 = sorted((s for k, s in kinds if k is SeriesKind.SAGITTAL_T2), key=_preference, reverse=True)
    if not sag_t2:
        unplaced_t2 = [
            s for s in stacks if s.orientation is None and s.problem and weighting_of(s.first) is Weighting.T2
        ]
        problem = unplaced_t2[0].problem if unplaced_t2 else None
        if problem is not None:  # a T2 series exists but its geometry is unusable: say that, not "absent"
            raise problem
        planes = sorted({str(p) for s in stacks if (p := plane_of(s)) is not None})
        raise ingest_error(
            IngestKind.NO_SAGITTAL_T2,
            f"no sagittal T2-weighted series among {len(stacks)} stacks "
            f"(planes seen: {', '.join(planes) or 'none'})",
        )
    best = sag_t2[0]
    if best.problem is not None:
        raise best.problem
    if best.n_slices < 2:
        raise ingest_error(
            IngestKind.SINGLE_SLICE, "the sagittal T2 series has a single slice; a volume is needed"
        )
    sag_t1 = [s for k, s in kinds if k is SeriesKind.SAGITTAL_T1 and s.problem is None and s.n_slices > 1]
    axial = [s for k, s in kinds if k is SeriesKind.AXIAL_T2]
    for s in axial:
        if s.problem is not None:
            raise s.problem
    axial.sort(key=lambda s: _axial_order(s.first))
    return Selection(
        sagittal_t2=best,
        sagittal_t1=max(sag_t1, key=_preference) if sag_t1 else None,
        axial_t2=tuple(axial),
    )


def _axial_order(h: InstanceHeader) -> tuple[float, int]:
    """Head to feet (patient +z is superior) so axial stacks read in level order."""
    return (-(h.position[2] if h.position else 0.0), h.series_number or 0)
