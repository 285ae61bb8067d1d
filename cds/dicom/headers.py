"""The header fields ingestion decides on, pulled out of a pydicom Dataset once, typed.

Why a typed copy: grouping, selection and the checks downstream should not each re-parse
DS/IS strings (which can be malformed) or guess about absent tags. A malformed value becomes None
here, and the step that needs it raises a clear IngestError.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from cds.dicom.sources.base import InstanceRef


@dataclass(frozen=True)
class InstanceHeader:
    ref: InstanceRef
    study_uid: str
    series_uid: str
    sop_uid: str
    frame_of_reference_uid: str
    patient_id: str
    study_date: dt.date | None
    study_description: str
    series_description: str
    protocol_name: str
    body_part: str
    modality: str
    image_type: tuple[str, ...]
    series_number: int | None
    instance_number: int | None
    rows: int | None
    cols: int | None
    frames: int
    samples_per_pixel: int
    orientation: tuple[float, ...] | None
    position: tuple[float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    spacing_between_slices: float | None
    echo_time: float | None
    repetition_time: float | None
    inversion_time: float | None

    @property
    def is_image(self) -> bool:
        """Image storage (has a pixel matrix); SR, KO, presentation states and the like are not."""
        return self.rows is not None and self.cols is not None


def header_from_dataset(ds: Dataset, ref: InstanceRef) -> InstanceHeader:
    position = _floats(ds, "ImagePositionPatient")
    spacing = _floats(ds, "PixelSpacing")
    return InstanceHeader(
        ref=ref,
        study_uid=_text(ds, "StudyInstanceUID"),
        series_uid=_text(ds, "SeriesInstanceUID"),
        sop_uid=_text(ds, "SOPInstanceUID"),
        frame_of_reference_uid=_text(ds, "FrameOfReferenceUID"),
        patient_id=_text(ds, "PatientID"),
        study_date=_date(ds, "StudyDate"),
        study_description=_text(ds, "StudyDescription"),
        series_description=_text(ds, "SeriesDescription"),
        protocol_name=_text(ds, "ProtocolName"),
        body_part=_text(ds, "BodyPartExamined"),
        modality=_text(ds, "Modality"),
        image_type=tuple(v.upper() for v in _texts(ds, "ImageType")),
        series_number=_int(ds, "SeriesNumber"),
        instance_number=_int(ds, "InstanceNumber"),
        rows=_int(ds, "Rows"),
        cols=_int(ds, "Columns"),
        frames=_int(ds, "NumberOfFrames") or 1,
        samples_per_pixel=_int(ds, "SamplesPerPixel") or 1,
        orientation=_floats(ds, "ImageOrientationPatient"),
        position=(position[0], position[1], position[2]) if position and len(position) == 3 else None,
        pixel_spacing=(spacing[0], spacing[1]) if spacing and len(spacing) == 2 else None,
        slice_thickness=_float(ds, "SliceThickness"),
        spacing_between_slices=_float(ds, "SpacingBetweenSlices"),
        echo_time=_float(ds, "EchoTime"),
        repetition_time=_float(ds, "RepetitionTime"),
        inversion_time=_float(ds, "InversionTime"),
    )


def _raw(ds: Dataset, keyword: str) -> Any:
    try:
        return ds.get(keyword)
    except Exception:  # a malformed value (bad DS string, undecodable text) is treated as absent
        return None


def _text(ds: Dataset, keyword: str) -> str:
    value = _raw(ds, keyword)
    if value is None:
        return ""
    try:
        return str(value).strip()
    except Exception:
        return ""


def _texts(ds: Dataset, keyword: str) -> tuple[str, ...]:
    value = _raw(ds, keyword)
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    try:
        return tuple(str(v) for v in value)
    except TypeError:
        return (str(value),)


def _floats(ds: Dataset, keyword: str) -> tuple[float, ...] | None:
    value = _raw(ds, keyword)
    if value is None or value == "":
        return None
    try:
        items = [value] if isinstance(value, int | float | str) else list(value)
        return tuple(float(v) for v in items)
    except (TypeError, ValueError):
        return None


def _float(ds: Dataset, keyword: str) -> float | None:
    values = _floats(ds, keyword)
    return values[0] if values else None


def _int(ds: Dataset, keyword: str) -> int | None:
    value = _float(ds, keyword)
    if value is None or value != value:  # NaN
        return None
    return int(value)


def _date(ds: Dataset, keyword: str) -> dt.date | None:
    text = _text(ds, keyword)
    try:
        return dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return None
