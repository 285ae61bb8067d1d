"""Write one synthetic series as MR Image Storage instances (pydicom), with geometry tags that match
``SeriesGeometry`` exactly and identifiers that cannot be mistaken for a real patient's.

UIDs are deterministic: ``uid(seed, role)`` is a name-based (version 5) UUID of the seed and the instance's
role under the 2.25 root, so the same seed writes byte-identical files and UIDs do not collide across seeds.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, MRImageStorage

from cds.synth.appearance import Pixels
from cds.synth.series import SeriesGeometry

IMPLEMENTATION_UID = "1.2.826.0.1.3680043.10.1450.1"  # fixed implementation class for the synth writer


_UID_NAMESPACE = uuid.UUID("6f1c3a52-5b0e-4d8e-9a43-2f7d8c0b9e11")  # fixed namespace of cds.synth UIDs


def uid(seed: int, role: str) -> str:
    """Deterministic UID under the UUID-derived root 2.25 (a name-based UUID of seed and role)."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, f'cds-synth/{seed}/{role}').int}"


@dataclass(frozen=True)
class StudyMeta:
    seed: int
    study_uid: str
    frame_uid: str
    patient_name: str
    patient_id: str
    study_date: dt.date
    accession: str
    manufacturer: str
    model_name: str
    field_strength_t: float
    patient_sex: str
    patient_age_years: int


@dataclass(frozen=True)
class SeriesMeta:
    series_uid: str
    number: int
    description: str
    echo_time_ms: float
    repetition_time_ms: float
    echo_train_length: int
    flip_angle: float


def _fmt(x: float) -> str:
    """Decimal String value of at most 16 characters."""
    s = f"{x:.6f}".rstrip("0").rstrip(".")
    return s if len(s) <= 16 else f"{x:.8g}"


def write_series(
    out_dir: Path, geom: SeriesGeometry, pixels: Pixels, study: StudyMeta, series: SeriesMeta
) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    date = study.study_date.strftime("%Y%m%d")
    for k in range(geom.n_slices):
        sop = uid(study.seed, f"{series.series_uid}/{k}")
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = UID(sop)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = UID(IMPLEMENTATION_UID)
        path = out_dir / f"{series.number:03d}_{k + 1:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NORM"]
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
        ds.StudyTime = "090000"
        ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = f"09{series.number:02d}00"
        ds.AccessionNumber = study.accession
        ds.Modality = "MR"
        ds.Manufacturer = study.manufacturer
        ds.ManufacturerModelName = study.model_name
        ds.InstitutionName = "SYNTHETIC"
        ds.ReferringPhysicianName = "SYNTHETIC^REFERRER"
        ds.StudyDescription = "MRI LUMBAR SPINE WO CONTRAST"
        ds.SeriesDescription = series.description
        ds.ProtocolName = series.description
        ds.PatientName = study.patient_name
        ds.PatientID = study.patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = study.patient_sex
        ds.PatientAge = f"{study.patient_age_years:03d}Y"
        ds.PatientIdentityRemoved = "YES"
        ds.BodyPartExamined = "LSPINE"
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = ["SK", "SP"]
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.SliceThickness = _fmt(geom.slice_thickness)
        ds.SpacingBetweenSlices = _fmt(geom.slice_spacing)
        ds.RepetitionTime = _fmt(series.repetition_time_ms)
        ds.EchoTime = _fmt(series.echo_time_ms)
        ds.EchoTrainLength = series.echo_train_length
        ds.MagneticFieldStrength = _fmt(study.field_strength_t)
        ds.ImagingFrequency = _fmt(42.577478 * study.field_strength_t)
        ds.FlipAngle = _fmt(series.flip_angle)
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study.study_uid
        ds.SeriesInstanceUID = series.series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = series.number
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        pos = geom.slice_position(k)
        ds.ImagePositionPatient = [_fmt(x) for x in pos]
        ds.ImageOrientationPatient = [_fmt(x) for x in (*geom.row_dir, *geom.col_dir)]
        ds.FrameOfReferenceUID = study.frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = _fmt(float(pos @ geom.normal))
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = geom.rows
        ds.Columns = geom.cols
        ds.PixelSpacing = [_fmt(geom.pixel_spacing[0]), _fmt(geom.pixel_spacing[1])]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.WindowCenter = _fmt(pixels.window_center)
        ds.WindowWidth = _fmt(pixels.window_width)
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "US"
        ds.BurnedInAnnotation = "NO"
        ds.ImageComments = "SYNTHETIC IMAGE generated by cds.synth - not a real patient"
        ds.PixelData = np.ascontiguousarray(pixels.data[k]).tobytes()
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
