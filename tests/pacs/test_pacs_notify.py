"""POST /pacs/notifications: authentication, validation, the lumbar filter, and no duplicate work.

Real app (create_app) on migrated SQLite and PostgreSQL; nothing is faked. Jobs are only queued
here (no runner), so what is counted is exactly what the notifications caused.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import hooks_support
import pytest
import sqlalchemy as sa
from flask import Flask
from pacs_support import notification

from cds.config import Settings
from cds.domain import AnalysisStatus
from cds.store import queries
from cds.store.db import Database
from cds.store.records import AnalysisRecord, JobRecord, StudyRecord

TOKEN = "pacs-notify-test-token"
UID = "1.2.826.0.1.3680043.8.498.501"
PACS = "http://pacs.example.org/dicom-web"


@pytest.fixture
def pacs_app(db: Database, app_settings: Settings) -> Iterator[Flask]:
    from cds import create_app
    from cds.extensions import services

    app = create_app(app_settings.with_overrides(pacs_notify_token=TOKEN, dicomweb_url=PACS))
    app.config["TESTING"] = True
    try:
        yield app
    finally:
        services(app).close()


def post(app: Flask, body: object, token: str | None = TOKEN) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    response = app.test_client().post("/pacs/notifications", json=body, headers=headers)
    return response.status_code, response.get_json(silent=True) or {}


def count(db: Database, record: type) -> int:
    with db.session(readonly=True) as s:
        return int(s.scalar(sa.select(sa.func.count()).select_from(record)) or 0)


def test_lumbar_mri_is_registered_and_queued(pacs_app: Flask, db: Database) -> None:
    status, body = post(pacs_app, notification(UID))
    assert status == 202
    assert body["outcome"] == "queued" and body["analysisStatus"] == "pending"
    with db.session(readonly=True) as s:
        study = queries.study_by_uid(s, UID)
        assert study is not None
        assert study.source_uri == f"{PACS}/studies/{UID}"
        assert study.patient_ref == "SYN-000001"
        assert study.study_date is not None and study.study_date.isoformat() == "2026-07-01"
        (job,) = s.scalars(sa.select(JobRecord)).all()
        assert job.payload["analysis_id"] == body["analysisId"] and job.payload["study_uid"] == UID


def test_other_studies_are_ignored_without_writing(pacs_app: Flask, db: Database) -> None:
    brain = notification(
        UID, studyDescription="MRI BRAIN", series=[{"modality": "MR", "bodyPartExamined": "HEAD"}]
    )
    ct = notification(UID, series=[{"modality": "CT", "bodyPartExamined": "LSPINE"}])
    for body, verdict in ((brain, "not_lumbar"), (ct, "not_mr")):
        status, answer = post(pacs_app, body)
        assert (status, answer["outcome"], answer["verdict"]) == (200, "ignored", verdict)
    assert count(db, StudyRecord) == count(db, JobRecord) == 0


@pytest.mark.parametrize("token", [None, "", "wrong-token", TOKEN + "x"])
def test_wrong_or_missing_token_is_401(pacs_app: Flask, db: Database, token: str | None) -> None:
    status, body = post(pacs_app, notification(UID), token=token)
    assert status == 401 and body["resourceType"] == "OperationOutcome"
    assert count(db, JobRecord) == 0


def test_endpoint_is_absent_without_a_configured_token(app: Flask) -> None:
    status, _ = post(app, notification(UID))
    assert status == 404


@pytest.mark.parametrize(
    "body",
    [
        [],
        "text",
        {"event": "StableStudy"},
        notification(UID, event="NewInstance"),
        notification("not-a-uid"),
        notification(UID, series={"modality": "MR"}),
        notification(UID, studyDescription="x" * 20000),
    ],
)
def test_invalid_bodies_are_400(pacs_app: Flask, db: Database, body: object) -> None:
    status, answer = post(pacs_app, body)
    assert status == 400 and answer["resourceType"] == "OperationOutcome"
    assert count(db, StudyRecord) == 0


def test_odd_dates_and_long_descriptions_do_not_drop_the_study(pacs_app: Flask, db: Database) -> None:
    """A refused notification is never retried: only what makes a study unusable is refused."""
    status, body = post(
        pacs_app, notification(UID, studyDate="2026-07-01", studyDescription="Lumbar " + "x" * 1000)
    )
    assert status == 202 and body["outcome"] == "queued"
    with db.session(readonly=True) as s:
        study = queries.study_by_uid(s, UID)
        assert study is not None and study.study_date is None
        assert study.description is not None and len(study.description) == 256
    assert count(db, JobRecord) == 1


def test_many_concurrent_duplicates_make_one_job(pacs_app: Flask, db: Database) -> None:
    """The same notification 40 times from 8 threads (Lua retry + poller + resend): one of each."""

    def send(_: int) -> tuple[int, str]:
        status, body = post(pacs_app, notification(UID))
        return status, body.get("analysisId", "")

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(send, range(40)))
    assert {status for status, _ in answers} == {202}
    assert len({analysis_id for _, analysis_id in answers}) == 1
    assert count(db, StudyRecord) == count(db, AnalysisRecord) == count(db, JobRecord) == 1


def test_notification_after_completion_queues_nothing(pacs_app: Flask, db: Database) -> None:
    _, first = post(pacs_app, notification(UID))
    with db.session() as s:
        queries.save_analysis(s, UID, hooks_support.analysis(), analysis_id=first["analysisId"])
    status, again = post(pacs_app, notification(UID))
    assert status == 202 and again["analysisStatus"] == AnalysisStatus.COMPLETE.value
    assert again["outcome"] == "analysed"
    assert again["analysisId"] == first["analysisId"]
    assert count(db, AnalysisRecord) == count(db, JobRecord) == 1


def test_study_known_from_the_ehr_keeps_its_patient_and_images(pacs_app: Flask, db: Database) -> None:
    with db.session() as s:
        queries.upsert_study(
            s, UID, patient_ref="Patient/p-7", source_uri="http://ehr-pacs/dicom-web/studies/x"
        )
    assert post(pacs_app, notification(UID))[0] == 202
    with db.session(readonly=True) as s:
        study = queries.study_by_uid(s, UID)
        assert study is not None
        assert (study.patient_ref, study.source_uri) == ("Patient/p-7", "http://ehr-pacs/dicom-web/studies/x")


def test_notification_without_a_configured_pacs_is_503(db: Database, app_settings: Settings) -> None:
    from cds import create_app
    from cds.extensions import services

    app = create_app(app_settings.with_overrides(pacs_notify_token=TOKEN))
    try:
        status, body = post(app, notification(UID))
        assert status == 503 and body["resourceType"] == "OperationOutcome"
        assert count(db, StudyRecord) == 0
    finally:
        services(app).close()


def test_notifications_after_a_failed_analysis_do_not_run_it_again(pacs_app: Flask, db: Database) -> None:
    """A settled failure (e.g. the models could not read the study) is not re-run by a duplicate."""
    from cds.jobs import analysis as analysis_job
    from cds.jobs.kinds import JobStatus

    _, first = post(pacs_app, notification(UID))
    with db.session() as s:
        queries.fail_analysis(s, first["analysisId"], analysis_job.REASON_MODEL_FAILED)
        s.execute(sa.update(JobRecord).values(status=JobStatus.FAILED))
    for _ in range(3):
        status, again = post(pacs_app, notification(UID))
        assert (status, again["outcome"], again["analysisStatus"]) == (202, "analysed", "failed")
    with db.session(readonly=True) as s:
        (job,) = s.scalars(sa.select(JobRecord)).all()
        assert job.status is JobStatus.FAILED
    assert count(db, AnalysisRecord) == 1


AXIAL = {"modality": "MR", "seriesDescription": "Ax T2 FSE", "bodyPartExamined": "LSPINE"}
SAGITTAL = {"modality": "MR", "seriesDescription": "Sag T2 FSE", "bodyPartExamined": "LSPINE"}


def analyze_jobs(db: Database) -> list[tuple[str, str]]:
    with db.session(readonly=True) as s:
        return sorted((j.dedupe_key, j.payload["analysis_id"]) for j in s.scalars(sa.select(JobRecord)))


def test_a_study_that_grows_after_its_first_analysis_is_analysed_again(pacs_app: Flask, db: Database) -> None:
    """Axial series first (analysis ends UNANALYSABLE: no sagittal T2), the sagittal one later:
    Orthanc fires StableStudy again; that notification (40 times, concurrently) makes exactly one
    new revision and one job; a further notification with the same series makes nothing."""
    _, first = post(pacs_app, notification(UID, series=[AXIAL]))
    with db.session() as s:
        record = queries.get_analysis(s, first["analysisId"])
        assert record is not None and record.pacs_series_seen == 1
        record.status, record.reason = AnalysisStatus.UNANALYSABLE, "no sagittal T2"

    def send(_: int) -> tuple[int, str]:
        status, body = post(pacs_app, notification(UID, series=[AXIAL, SAGITTAL]))
        return status, body.get("analysisId", "")

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(send, range(40)))
    assert {status for status, _ in answers} == {202}
    (second_id,) = {analysis_id for _, analysis_id in answers}
    assert second_id != first["analysisId"]
    with db.session(readonly=True) as s:
        latest = queries.latest_analysis(s, UID)
        assert latest is not None and latest.id == second_id
        assert (latest.revision, latest.status, latest.pacs_series_seen) == (2, AnalysisStatus.PENDING, 2)
    jobs = analyze_jobs(db)
    assert sorted(analysis_id for _, analysis_id in jobs) == sorted([first["analysisId"], second_id])
    assert count(db, AnalysisRecord) == 2 and len({key for key, _ in jobs}) == 2

    status, again = post(pacs_app, notification(UID, series=[AXIAL, SAGITTAL]))
    assert status == 202 and again["analysisId"] == second_id
    assert count(db, AnalysisRecord) == 2 and count(db, JobRecord) == 2


def test_a_study_growing_while_its_analysis_is_pending_gets_a_revision_too(
    pacs_app: Flask, db: Database
) -> None:
    """The job may already be reading the partial study: the grown one is a new revision."""
    _, first = post(pacs_app, notification(UID, series=[AXIAL]))
    _, second = post(pacs_app, notification(UID, series=[AXIAL, SAGITTAL]))
    assert second["analysisId"] != first["analysisId"] and second["analysisStatus"] == "pending"
    assert count(db, AnalysisRecord) == count(db, JobRecord) == 2
    # Fewer series than the latest analysis saw (a partial re-send): nothing new.
    assert post(pacs_app, notification(UID, series=[AXIAL]))[1]["analysisId"] == second["analysisId"]
    assert count(db, AnalysisRecord) == count(db, JobRecord) == 2


def test_a_study_that_grows_within_a_series_is_analysed_again(pacs_app: Flask, db: Database) -> None:
    """Same series, more instances (slices still arriving when the study first went stable): a new
    revision, once however many duplicates race; the same or fewer instances: nothing new."""
    partial = [{**SAGITTAL, "instances": 7}, {**AXIAL, "instances": 20}]
    full = [{**SAGITTAL, "instances": 15}, {**AXIAL, "instances": 20}]
    _, first = post(pacs_app, notification(UID, series=partial))
    with db.session() as s:
        record = queries.get_analysis(s, first["analysisId"])
        assert record is not None and (record.pacs_series_seen, record.pacs_instances_seen) == (2, 27)
        record.status = AnalysisStatus.COMPLETE

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: post(pacs_app, notification(UID, series=full)), range(20)))
    assert {status for status, _ in answers} == {202}
    (second_id,) = {body["analysisId"] for _, body in answers}
    assert second_id != first["analysisId"]
    with db.session(readonly=True) as s:
        latest = queries.latest_analysis(s, UID)
        assert latest is not None and latest.id == second_id
        assert (latest.revision, latest.pacs_series_seen, latest.pacs_instances_seen) == (2, 2, 35)
    assert count(db, AnalysisRecord) == count(db, JobRecord) == 2

    for series in (full, partial):  # a repeat, or a partial re-send: nothing new
        assert post(pacs_app, notification(UID, series=series))[1]["analysisId"] == second_id
    assert count(db, AnalysisRecord) == count(db, JobRecord) == 2


def test_unknown_instance_counts_never_look_like_growth(pacs_app: Flask, db: Database) -> None:
    """A notification without counts (an older Lua script, another PACS) after one with counts,
    and the other way round: series alone decide."""
    _, first = post(pacs_app, notification(UID, series=[SAGITTAL, AXIAL]))
    with db.session(readonly=True) as s:
        record = queries.get_analysis(s, first["analysisId"])
        assert record is not None and (record.pacs_series_seen, record.pacs_instances_seen) == (2, None)
    counted = [{**SAGITTAL, "instances": 15}, {**AXIAL, "instances": 20}]
    assert post(pacs_app, notification(UID, series=counted))[1]["analysisId"] == first["analysisId"]
    assert count(db, AnalysisRecord) == 1


@pytest.mark.parametrize("instances", [-1, 100_001, "many"])
def test_bad_instance_counts_are_400(pacs_app: Flask, db: Database, instances: object) -> None:
    status, _ = post(pacs_app, notification(UID, series=[{**SAGITTAL, "instances": instances}]))
    assert status == 400 and count(db, AnalysisRecord) == 0
