"""Hand-crafted DICOM for the ingestion tests (pydicom only, no generator needed).

Pixel values encode where they come from: every pixel of true slice t holds 100 * (t + 1) + its row
index's tens, so a test can check that slices were sorted by position and not by file order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

SAG_IOP = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # rows run posterior, columns run inferior
AX_IOP = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # rows run left, columns run posterior
COR_IOP = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def rotation_x(deg: float) -> NDArray[np.float64]:
    """Rotation about the patient left-right axis (tilts an axial plane like a lordotic disc)."""
    t = np.radians(deg)
    return np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])


def rotated_iop(iop: Sequence[float], rot: NDArray[np.float64]) -> tuple[float, ...]:
    r = rot @ np.asarray(iop[:3], dtype=float)
    c = rot @ np.asarray(iop[3:], dtype=float)
    return tuple(float(v) for v in (*r, *c))


@dataclass
class SeriesSpec:
    description: str
    iop: Sequence[float]
    origin: Sequence[float]
    n_slices: int
    slice_step_mm: float = 4.0
    rows: int = 32
    cols: int = 32
    pixel_spacing: tuple[float, float] = (1.0, 1.0)
    echo_time: float | None = 100.0
    repetition_time: float | None = 3000.0
    series_uid: str = field(default_factory=generate_uid)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def normal(self) -> NDArray[np.float64]:
        return np.cross(np.asarray(self.iop[:3], dtype=float), np.asarray(self.iop[3:], dtype=float))

    def position(self, t: int) -> NDArray[np.float64]:
        return np.asarray(self.origin, dtype=float) + t * self.slice_step_mm * self.normal


def frame_of_reference_uid(study_uid: str) -> str:
    """Deterministic per study, so every series of a study shares one frame of reference."""
    return generate_uid(entropy_srcs=[study_uid, "frame-of-reference"])


def make_instance(
    spec: SeriesSpec,
    t: int,
    study_uid: str,
    *,
    pixels: NDArray[np.uint16] | None = None,
    body_part: str = "LSPINE",
    study_description: str = "MRI LUMBAR SPINE",
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.FrameOfReferenceUID = frame_of_reference_uid(study_uid)
    ds.Modality = "MR"
    ds.PatientName = "SYNTHETIC^TEST"
    ds.PatientID = "SYN-0001"
    ds.StudyDate = "20260101"
    ds.StudyDescription = study_description
    ds.SeriesDescription = spec.description
    if body_part:
        ds.BodyPartExamined = body_part
    ds.InstanceNumber = t + 1
    ds.ImageOrientationPatient = [round(v, 6) for v in spec.iop]
    ds.ImagePositionPatient = [round(float(v), 4) for v in spec.position(t)]
    ds.PixelSpacing = list(spec.pixel_spacing)
    ds.SliceThickness = spec.slice_step_mm
    if spec.echo_time is not None:
        ds.EchoTime = spec.echo_time
    if spec.repetition_time is not None:
        ds.RepetitionTime = spec.repetition_time
    ds.Rows, ds.Columns = spec.rows, spec.cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    if pixels is None:
        rows = np.arange(spec.rows, dtype=np.uint16)[:, None] // 10
        pixels = np.broadcast_to(100 * (t + 1) + rows, (spec.rows, spec.cols)).astype(np.uint16)
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    for key, value in spec.extra.items():
        setattr(ds, key, value)
    return ds


def write_series(
    folder: Path,
    spec: SeriesSpec,
    study_uid: str,
    *,
    order: Sequence[int] | None = None,
    **kw: Any,
) -> list[Path]:
    """Write one series; `order` shuffles which slice gets which file name and InstanceNumber."""
    folder.mkdir(parents=True, exist_ok=True)
    order = list(order) if order is not None else list(range(spec.n_slices))
    paths = []
    for file_no, t in enumerate(order):
        ds = make_instance(spec, t, study_uid, **kw)
        ds.InstanceNumber = file_no + 1  # deliberately unrelated to position when shuffled
        path = folder / f"{spec.series_uid[-8:]}_{file_no:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def lumbar_specs(rows: int = 32, cols: int = 32, axial_tilt_deg: float = 0.0) -> dict[str, SeriesSpec]:
    """A small lumbar protocol: sagittal T2, sagittal T1, one axial T2 stack."""
    axial_iop = rotated_iop(AX_IOP, rotation_x(axial_tilt_deg))
    return {
        "sag_t2": SeriesSpec("SAG T2 TSE", SAG_IOP, (-20.0, -60.0, 80.0), 11, 4.0, rows, cols, (1.0, 1.0)),
        "sag_t1": SeriesSpec(
            "SAG T1 TSE", SAG_IOP, (-20.0, -60.0, 80.0), 11, 4.0, rows, cols, (1.0, 1.0), 12.0, 550.0
        ),
        "ax_t2": SeriesSpec("AX T2 TSE", axial_iop, (-60.0, -60.0, -10.0), 7, 4.0, rows, cols, (0.8, 0.8)),
    }


def write_lumbar_study(
    folder: Path, study_uid: str | None = None, **kw: Any
) -> tuple[str, dict[str, SeriesSpec]]:
    study_uid = study_uid or generate_uid()
    specs = lumbar_specs()
    rng = np.random.default_rng(0)
    for spec in specs.values():
        write_series(folder, spec, study_uid, order=rng.permutation(spec.n_slices).tolist(), **kw)
    return study_uid, specs
