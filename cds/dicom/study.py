"""load_study: from a folder, zip or DICOMweb source to a Study with the volumes the pipeline needs.

Steps, each with its own typed failure: read headers only -> keep image instances -> one study? ->
lumbar spine? -> stacks (grouped, sorted along the normal) -> choose sagittal T2 / T1 / axial T2 ->
check sizes and decoders -> read and decode only the chosen stacks -> Volumes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cds.dicom.anatomy import check_lumbar_spine
from cds.dicom.errors import IngestKind, ingest_error
from cds.dicom.headers import InstanceHeader, header_from_dataset
from cds.dicom.limits import DEFAULT_LIMITS, IngestLimits
from cds.dicom.pixels import check_frame_size, decode_frame
from cds.dicom.selection import SeriesKind, kind_of, plane_of, select_series
from cds.dicom.series import Stack, group_stacks
from cds.dicom.sources.base import DicomSource
from cds.dicom.sources.folder import FolderSource
from cds.dicom.sources.zipped import ZipSource
from cds.dicom.volume import Volume


@dataclass(frozen=True)
class SeriesInfo:
    """Every stack found in the study (decoded or not), for audit records and error messages."""

    series_uid: str
    description: str
    kind: SeriesKind
    plane: str
    n_slices: int
    part: int
    problem: str | None


@dataclass(frozen=True)
class Study:
    study_uid: str
    patient_id: str
    study_date: dt.date | None
    description: str
    series: tuple[Volume, ...]
    found: tuple[SeriesInfo, ...] = ()

    @property
    def sagittal_t2(self) -> Volume:
        for v in self.series:
            if v.kind is SeriesKind.SAGITTAL_T2:
                return v
        raise ingest_error(IngestKind.NO_SAGITTAL_T2, "study has no sagittal T2-weighted series")

    @property
    def sagittal_t1(self) -> Volume | None:
        return next((v for v in self.series if v.kind is SeriesKind.SAGITTAL_T1), None)

    @property
    def axial_t2(self) -> tuple[Volume, ...]:
        """Axial T2 stacks, head to feet (one per disc block when the scanner angled them)."""
        return tuple(v for v in self.series if v.kind is SeriesKind.AXIAL_T2)


def as_source(source: Path | str | DicomSource, limits: IngestLimits = DEFAULT_LIMITS) -> DicomSource:
    if not isinstance(source, str | Path):
        return source
    path = Path(source)
    if path.is_file() and _is_zip(path):
        return ZipSource(path, limits)
    return FolderSource(path, limits)


def _is_zip(path: Path) -> bool:
    with path.open("rb") as fp:
        return fp.read(4) == b"PK\x03\x04"


def load_study(
    source: Path | str | DicomSource,
    *,
    study_uid: str | None = None,
    limits: IngestLimits = DEFAULT_LIMITS,
) -> Study:
    """Read a lumbar spine MRI study. `study_uid` picks one study from a source holding several."""
    src = as_source(source, limits)
    headers = _image_headers(src, limits)
    if study_uid is not None:
        headers = [h for h in headers if h.study_uid == study_uid]
        if not headers:
            raise ingest_error(
                IngestKind.STUDY_NOT_FOUND, f"{src.describe()} does not contain the requested study"
            )
    study_uids = {h.study_uid for h in headers}
    if len(study_uids) > 1:
        raise ingest_error(
            IngestKind.MIXED_STUDIES,
            f"{src.describe()} holds {len(study_uids)} studies; ingest one study at a time",
        )
    if len(headers) == 1:
        raise ingest_error(
            IngestKind.SINGLE_SLICE, f"{src.describe()} holds a single image; a study is needed"
        )
    check_lumbar_spine(headers)
    stacks = group_stacks(headers)
    selection = select_series(stacks)
    chosen = selection.chosen()
    for _kind, stack in chosen:
        _check_sizes(stack, limits)
    volumes = _decode(src, chosen, limits)
    first = headers[0]
    return Study(
        study_uid=first.study_uid,
        patient_id=first.patient_id,
        study_date=first.study_date,
        description=first.study_description,
        series=volumes,
        found=tuple(_info(s) for s in stacks),
    )


def _image_headers(src: DicomSource, limits: IngestLimits) -> list[InstanceHeader]:
    headers = []
    for ref, ds in src.iter_headers():
        h = header_from_dataset(ds, ref)
        if h.is_image:
            headers.append(h)
        if len(headers) > limits.max_instances:
            raise ingest_error(
                IngestKind.TOO_LARGE, f"{src.describe()} holds more than {limits.max_instances} images"
            )
    if not headers:
        raise ingest_error(IngestKind.EMPTY, f"{src.describe()} holds no DICOM images")
    return headers


def _check_sizes(stack: Stack, limits: IngestLimits) -> None:
    h = stack.first
    check_frame_size(h, limits)
    voxels = stack.n_slices * (h.rows or 0) * (h.cols or 0)
    if voxels > limits.max_series_voxels:
        raise ingest_error(
            IngestKind.TOO_LARGE,
            f"series '{h.series_description}' has {voxels} voxels, limit {limits.max_series_voxels}",
        )


def _decode(
    src: DicomSource, chosen: list[tuple[SeriesKind, Stack]], limits: IngestLimits
) -> tuple[Volume, ...]:
    wanted = [h.ref for _, stack in chosen for h in stack.headers]
    datasets = dict(src.read_instances(wanted))
    volumes = []
    for kind, stack in chosen:
        first = stack.first
        array = np.empty((stack.n_slices, first.rows or 0, first.cols or 0), dtype=np.float32)
        for k, h in enumerate(stack.headers):
            ds = datasets.pop(h.ref, None)  # drop each instance once decoded: lowers peak memory
            if ds is None:
                raise ingest_error(
                    IngestKind.TRUNCATED, f"{src.describe()} did not return every instance of a series"
                )
            decode_frame(ds, h, limits, out=array[k])
        spacing = stack.first.pixel_spacing
        assert spacing is not None
        volumes.append(
            Volume(
                array=array,
                affine=stack.affine(),
                spacing_mm=(float(stack.slice_spacing_mm or 0.0), float(spacing[0]), float(spacing[1])),
                series_uid=stack.series_uid,
                description=stack.description,
                kind=kind,
                sop_uids=tuple(h.sop_uid for h in stack.headers),
                part=stack.part,
                frame_of_reference_uid=first.frame_of_reference_uid,
            )
        )
    return tuple(volumes)


def _info(stack: Stack) -> SeriesInfo:
    return SeriesInfo(
        series_uid=stack.series_uid,
        description=stack.description,
        kind=kind_of(stack),
        plane=str(plane_of(stack) or "unknown"),
        n_slices=stack.n_slices,
        part=stack.part,
        problem=stack.problem.message if stack.problem else None,
    )
