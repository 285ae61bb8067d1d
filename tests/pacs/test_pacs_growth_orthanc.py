"""A study that grows within a series, against a real Orthanc (DICOMweb + the product's Lua script).

Slices of a series still arriving after the study first went stable: Orthanc fires OnStableStudy
again, notify.lua sends the per-series instance counts it read from Orthanc, and the intake makes
exactly one new revision for the grown study. The /changes poller, reading the same Orthanc, sees
the same counts (cds.pacs.orthanc) and makes nothing new. Jobs are only queued here (no runner):
what is counted is exactly what Orthanc's notifications caused.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
import sqlalchemy as sa
from pacs_support import PASSWORD, USER, Orthanc, live_app, running_orthanc
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from cds.config import Settings
from cds.pacs.orthanc import OrthancClient
from cds.pacs.poller import ChangePoller
from cds.store import queries
from cds.store.db import Database
from cds.store.records import AnalysisRecord, JobRecord

pytestmark = pytest.mark.integration

TOKEN = "orthanc-growth-test-token"


def write_series(folder: Path, study_uid: str, series_uid: str, numbers: range) -> None:
    """Small MR instances of one sagittal lumbar series (headers are what the intake reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in numbers:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.PatientID, ds.PatientName, ds.StudyDate = "GROW-1", "Test^Grow", "20260701"
        ds.Modality, ds.BodyPartExamined = "MR", "LSPINE"
        ds.StudyDescription, ds.SeriesDescription = "MRI LUMBAR SPINE", "Sag T2"
        ds.SeriesNumber, ds.InstanceNumber = 1, n
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.full((8, 8), n, dtype=np.uint16).tobytes()
        ds.save_as(folder / f"{n:03d}.dcm", enforce_file_format=True)


@pytest.fixture
def notified(db: Database, app_settings: Settings, tmp_path: Path) -> Iterator[tuple[Orthanc, Settings]]:
    """The app on loopback, and an Orthanc whose Lua script notifies it."""
    from cds import create_app
    from cds.extensions import services

    settings = app_settings.with_overrides(
        pacs_notify_token=TOKEN, explain_eager="off", dicomweb_username=USER, dicomweb_password=PASSWORD
    )
    app = create_app(settings)
    try:
        with live_app(app) as url:
            env = {"CDS_PACS_NOTIFY_URL": f"{url}/pacs/notifications", "CDS_PACS_NOTIFY_TOKEN": TOKEN}
            with running_orthanc(tmp_path / "orthanc", lua=True, env=env) as orthanc:
                final = settings.with_overrides(dicomweb_url=orthanc.dicomweb_url)
                object.__setattr__(services(app), "settings", final)  # Orthanc's port is known now
                yield orthanc, final
    finally:
        services(app).close()


def wait_for_instances(db: Database, uid: str, instances: int, orthanc: Orthanc) -> AnalysisRecord:
    """The latest analysis once it was requested for `instances` instances."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with db.session(readonly=True) as s:
            latest = queries.latest_analysis(s, uid) if queries.study_by_uid(s, uid) else None
            if latest is not None and latest.pacs_instances_seen == instances:
                s.expunge(latest)
                return latest
        time.sleep(0.2)
    raise AssertionError(f"no analysis for {instances} instances; Orthanc log:\n{orthanc.log()[-2000:]}")


def history(db: Database) -> list[tuple[int, int | None, int | None]]:
    with db.session(readonly=True) as s:
        analyses = s.scalars(sa.select(AnalysisRecord).order_by(AnalysisRecord.revision)).all()
        return [(a.revision, a.pacs_series_seen, a.pacs_instances_seen) for a in analyses]


def job_count(db: Database) -> int:
    with db.session(readonly=True) as s:
        return int(s.scalar(sa.select(sa.func.count()).select_from(JobRecord)) or 0)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_late_instances_of_a_series_make_one_new_revision(
    backend: str, db: Database, notified: tuple[Orthanc, Settings], tmp_path: Path
) -> None:
    orthanc, settings = notified
    study_uid, series_uid = generate_uid(), generate_uid()
    write_series(tmp_path / "first", study_uid, series_uid, range(1, 4))
    write_series(tmp_path / "late", study_uid, series_uid, range(4, 12))

    orthanc.upload_folder(tmp_path / "first")
    first = wait_for_instances(db, study_uid, 3, orthanc)  # the count notify.lua sent
    assert (first.revision, first.pacs_series_seen) == (1, 1)

    orthanc.upload_folder(tmp_path / "late")  # same series: only the instance count grows
    second = wait_for_instances(db, study_uid, 11, orthanc)
    assert second.revision > 1 and second.pacs_series_seen == 1
    time.sleep(2.5)  # any further StableStudy (StableAge 1 s) has arrived by now
    seen = history(db)
    # Normally [(1, 1, 3), (2, 1, 11)]; on a very slow machine Orthanc may also have announced a
    # moment mid-upload: each revision is then for more instances than the one before, never twice.
    assert seen[0] == (1, 1, 3) and seen[-1][2] == 11
    assert [r for r, _, _ in seen] == list(range(1, len(seen) + 1))
    assert all((a[2] or 0) < (b[2] or 0) for a, b in itertools.pairwise(seen))
    assert job_count(db) == len(seen)

    # The poller reads the same Orthanc (REST API counts, not Lua's): nothing new.
    from cds.jobs.queue import JobQueue

    poller = ChangePoller(db, JobQueue(db), settings, OrthancClient.from_settings(settings))
    report = poller.poll_once()
    while not report.done:
        report = poller.poll_once()
    assert report.stable_studies >= 1
    assert history(db) == seen and job_count(db) == len(seen)
