"""Ingestion benchmark: load time of a synthetic-like lumbar study (folder and zip).

Study: 15 sagittal T2 + 25 axial T2 (5 angled blocks of 5) 512x512 16-bit images, plus, in the
"with extras" case, 15 sagittal T1 and 15 sagittal STIR that are read as headers only (the STIR
is never decoded; the T1 is). Prints median and p95 over --runs repetitions, and the ratio
against a naive reader that decodes every file's pixels before deciding anything.

    .venv/bin/python bench/ingest_bench.py --runs 15
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from cds.dicom import FolderSource, InstanceRef, load_study


def _instance(
    study_uid: str,
    series_uid: str,
    desc: str,
    iop: list[float],
    ipp: list[float],
    te: float,
    tr: float,
    rng: np.random.Generator,
    n: int,
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.Modality, ds.PatientID, ds.PatientName = "MR", "BENCH-1", "BENCH^SYNTHETIC"
    ds.StudyDescription, ds.SeriesDescription, ds.BodyPartExamined = "MRI LUMBAR SPINE", desc, "LSPINE"
    ds.InstanceNumber = n
    ds.ImageOrientationPatient = [round(v, 6) for v in iop]
    ds.ImagePositionPatient = [round(v, 4) for v in ipp]
    ds.PixelSpacing, ds.SliceThickness = [0.6, 0.6], 4.0
    ds.EchoTime, ds.RepetitionTime = te, tr
    ds.Rows = ds.Columns = 512
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PixelData = rng.integers(0, 4096, size=(512, 512), dtype=np.uint16).tobytes()
    return ds


def write_study(folder: Path, extras: bool) -> int:
    rng = np.random.default_rng(0)
    study_uid = generate_uid()
    sag = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
    series: list[tuple[str, list[float], list[list[float]], float, float]] = []
    sag_pos = [[-28.0 + 4.0 * k, -150.0, 150.0] for k in range(15)]
    series.append(("SAG T2 TSE", sag, sag_pos, 100.0, 3500.0))
    if extras:
        series.append(("SAG T1 TSE", sag, sag_pos, 10.0, 550.0))
        series.append(("SAG STIR", sag, sag_pos, 70.0, 4000.0))
    count = 0
    for desc, iop, positions, te, tr in series:
        series_uid = generate_uid()
        for n, ipp in enumerate(positions):
            _instance(study_uid, series_uid, desc, iop, ipp, te, tr, rng, n + 1).save_as(
                folder / f"{desc.replace(' ', '_')}_{n:02d}.dcm", enforce_file_format=True
            )
            count += 1
    axial_uid = generate_uid()
    for block in range(5):
        t = np.radians(-20.0 + 10.0 * block)
        row = [1.0, 0.0, 0.0]
        col = [0.0, float(np.cos(t)), float(np.sin(t))]
        normal = np.cross(row, col)
        for s in range(5):
            centre = np.array([0.0, 0.0, 120.0 - 35.0 * block]) + (s - 2) * 4.0 * normal
            corner = centre - 153.6 * np.array(row) - 153.6 * np.array(col)
            _instance(
                study_uid,
                axial_uid,
                "AX T2 TSE",
                row + col,
                corner.tolist(),
                100.0,
                4000.0,
                rng,
                block * 5 + s + 1,
            ).save_as(folder / f"AX_{block}_{s}.dcm", enforce_file_format=True)
            count += 1
    return count


class FullReadFolderSource(FolderSource):
    """Baseline: the same pipeline, but every file is read whole (pixels included) up front."""

    def iter_headers(self) -> Iterator[tuple[InstanceRef, Dataset]]:
        for path in sorted(self.root.glob("*.dcm")):
            yield InstanceRef(str(path)), dcmread(path)

    def read_instances(self, refs: Sequence[InstanceRef]) -> Iterator[tuple[InstanceRef, Dataset]]:
        for ref in refs:  # a real baseline would keep the datasets; re-reading costs the same here
            yield ref, dcmread(ref.key)


def naive_load(folder: Path) -> None:
    """Decode every file's pixels, then build the same study: what reading headers first avoids."""
    for path in sorted(folder.glob("*.dcm")):
        _ = dcmread(path).pixel_array.astype(np.float32)
    load_study(FullReadFolderSource(folder))


def select_only(folder: Path) -> None:
    """The part of load_study before any pixel is decoded: read headers, group, choose."""
    from cds.dicom.headers import header_from_dataset
    from cds.dicom.selection import select_series
    from cds.dicom.series import group_stacks

    headers = [header_from_dataset(ds, ref) for ref, ds in FolderSource(folder).iter_headers()]
    select_series(group_stacks(headers))


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    fn()  # warm the page cache and imports
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000.0)
    return out


def summary(name: str, ms: list[float]) -> float:
    med = statistics.median(ms)
    p95 = float(np.percentile(ms, 95))
    print(f"{name:<46} median {med:8.1f} ms   p95 {p95:8.1f} ms   (n={len(ms)})")
    return med


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for extras in (False, True):
            folder = Path(tmp) / ("extras" if extras else "basic")
            folder.mkdir()
            n = write_study(folder, extras)
            archive = folder.with_suffix(".zip")
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
                for path in sorted(folder.glob("*.dcm")):
                    zf.write(path, path.name)
            mb = sum(p.stat().st_size for p in folder.glob("*.dcm")) / 1e6
            label = "15 sag T2 + 25 axial" + (" + 15 sag T1 + 15 STIR" if extras else "")
            print(f"\n{label}: {n} images, {mb:.1f} MB, 512x512")
            study = load_study(folder)
            print("  volumes:", ", ".join(f"{v.kind.value}{v.shape}" for v in study.series))
            folder_ms = summary("  load_study(folder)", timed(partial(load_study, folder), args.runs))
            summary(
                "  load_study(zip, members inflated in memory)",
                timed(partial(load_study, archive), args.runs),
            )
            summary(
                "  headers + selection only (no pixel decoding)",
                timed(partial(select_only, folder), args.runs),
            )
            base_ms = summary(
                "  baseline: read + decode every file first", timed(partial(naive_load, folder), args.runs)
            )
            print(f"  ratio load_study(folder) / baseline: {folder_ms / base_ms:.2f}")


if __name__ == "__main__":
    main()
