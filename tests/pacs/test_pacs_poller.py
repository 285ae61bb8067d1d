"""The /changes poller: cursor persistence, catch-up, failure handling (Orthanc faked at its REST
boundary here; tests/pacs/test_pacs_orthanc.py runs it against a real Orthanc)."""

from __future__ import annotations

from typing import Any, cast

import pytest
import sqlalchemy as sa

from cds.config import Settings
from cds.errors import NotFound, UpstreamError
from cds.jobs.queue import JobQueue
from cds.pacs.cursor import load_cursor, save_cursor
from cds.pacs.orthanc import Change, ChangePage, OrthancClient
from cds.pacs.poller import ChangePoller
from cds.pacs.study import SeriesInfo, StableStudy
from cds.store.db import Database
from cds.store.records import JobRecord

SETTINGS = Settings(dicomweb_url="http://pacs.example.org/dicom-web")
LUMBAR = (SeriesInfo("MR", "Sag T2", "LSPINE"),)
BRAIN = (SeriesInfo("MR", "Ax T2", "HEAD"),)


class FakeOrthanc:
    """Orthanc's /changes semantics: changes with Seq > since, at most `limit`, Done when exhausted."""

    def __init__(self) -> None:
        self.log: list[Change] = []
        self.studies: dict[str, StableStudy] = {}
        self.down = False
        self.fail_study: str | None = None

    def add(self, orthanc_id: str, uid: str | None, series: tuple[SeriesInfo, ...] = LUMBAR) -> None:
        seq = len(self.log) + 1
        self.log.append(Change(seq, "NewInstance", f"i{seq}"))
        self.log.append(Change(seq + 1, "StableStudy", orthanc_id))
        if uid is not None:
            self.studies[orthanc_id] = StableStudy(uid, patient_id="P", series=series)

    def last_change(self) -> int:
        return self.log[-1].seq if self.log else 0

    def changes(self, since: int, limit: int = 100) -> ChangePage:
        if self.down:
            raise UpstreamError("Orthanc unreachable")
        page = [c for c in self.log if c.seq > since][:limit]
        # Like Orthanc: with nothing after `since`, Last is the newest Seq (below `since` when the
        # change log restarted).
        last = page[-1].seq if page else self.last_change()
        return ChangePage(tuple(page), last, not [c for c in self.log if c.seq > last])

    def stable_study(self, orthanc_id: str) -> StableStudy:
        if orthanc_id == self.fail_study:
            raise UpstreamError("Orthanc failed mid-page")
        if orthanc_id not in self.studies:
            raise NotFound("deleted")
        return self.studies[orthanc_id]


def poller(db: Database, fake: FakeOrthanc, page_size: int = 100) -> ChangePoller:
    return ChangePoller(db, JobQueue(db), SETTINGS, cast(OrthancClient, fake), page_size=page_size)


def job_uids(db: Database) -> list[str]:
    with db.session(readonly=True) as s:
        return sorted(j.payload["study_uid"] for j in s.scalars(sa.select(JobRecord)))


def test_stable_lumbar_studies_are_queued_once_and_the_cursor_is_kept(db: Database) -> None:
    fake = FakeOrthanc()
    fake.add("a", "1.2.3.1")
    fake.add("b", "1.2.3.2", BRAIN)
    fake.add("c", None)  # deleted before the poll
    report = poller(db, fake).poll_once()
    assert (report.changes, report.stable_studies, report.queued, report.skipped) == (6, 3, 1, 2)
    assert report.done and report.cursor == 6 == load_cursor(db, "orthanc")
    assert job_uids(db) == ["1.2.3.1"]
    # A new poller (a restart) resumes after the cursor: nothing is read twice.
    again = poller(db, fake).poll_once()
    assert again.changes == 0 and job_uids(db) == ["1.2.3.1"]
    fake.add("d", "1.2.3.4")
    assert poller(db, fake).poll_once().queued == 1
    assert job_uids(db) == ["1.2.3.1", "1.2.3.4"]


def test_pages_are_followed_until_done(db: Database) -> None:
    fake = FakeOrthanc()
    for i in range(5):
        fake.add(f"s{i}", f"1.2.3.{10 + i}")
    p = poller(db, fake, page_size=3)
    reports = [p.poll_once()]
    while not reports[-1].done:
        reports.append(p.poll_once())
    assert len(reports) == 4 and sum(r.queued for r in reports) == 5
    assert len(job_uids(db)) == 5


def test_a_failure_mid_page_keeps_the_cursor_at_the_last_handled_change(db: Database) -> None:
    fake = FakeOrthanc()
    fake.add("a", "1.2.3.1")
    fake.add("b", "1.2.3.2")
    fake.fail_study = "b"
    with pytest.raises(UpstreamError):
        poller(db, fake).poll_once()
    assert load_cursor(db, "orthanc") == 2  # a's StableStudy, the last handled study
    fake.fail_study = None
    assert poller(db, fake).poll_once().queued == 1
    assert job_uids(db) == ["1.2.3.1", "1.2.3.2"]


def test_pacs_down_changes_nothing_and_from_now_skips_history(db: Database) -> None:
    fake = FakeOrthanc()
    fake.add("a", "1.2.3.1")
    fake.down = True
    with pytest.raises(UpstreamError):
        poller(db, fake).poll_once()
    assert load_cursor(db, "orthanc") is None
    fake.down = False
    assert poller(db, fake).start_from_now() == 2
    fake.add("b", "1.2.3.2")
    assert poller(db, fake).poll_once().queued == 1
    assert job_uids(db) == ["1.2.3.2"]


def test_cursor_never_moves_back(db: Database) -> None:
    save_cursor(db, "feed", 10)
    save_cursor(db, "feed", 4)
    assert load_cursor(db, "feed") == 10


def test_a_restarted_pacs_change_log_resets_the_cursor(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeOrthanc()
    for i in range(5):
        fake.add(f"s{i}", f"1.2.3.{i}")
    assert poller(db, fake).poll_once().queued == 5
    assert load_cursor(db, "orthanc") == 10
    # Orthanc's database is recreated: its Seq numbers start again at 1, below the cursor.
    fake.log.clear()
    fake.add("new", "1.2.9.1")
    with caplog.at_level("WARNING", logger="cds.pacs.poller"):
        report = poller(db, fake).poll_once()
    assert report.done is False and load_cursor(db, "orthanc") == 0
    assert "restarted" in caplog.text and "1.2.9.1" not in caplog.text
    assert poller(db, fake).poll_once().queued == 1
    assert "1.2.9.1" in job_uids(db)
    assert load_cursor(db, "orthanc") == 2
    # A normal poll with nothing new leaves the cursor where it is.
    assert poller(db, fake).poll_once().changes == 0
    assert load_cursor(db, "orthanc") == 2


def test_run_loop_backs_off_while_the_pacs_is_down(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    fake = FakeOrthanc()
    fake.down = True
    waits: list[float] = []
    stop = threading.Event()

    def wait(delay: float) -> bool:
        waits.append(delay)
        if len(waits) == 4:
            fake.down = False
            fake.add("a", "1.2.3.1")
        if len(waits) == 6:
            stop.set()
        return stop.is_set()

    monkeypatch.setattr(stop, "wait", cast(Any, wait))
    poller(db, fake).run(stop, interval_s=1.0)
    assert waits[:4] == [1.0, 2.0, 4.0, 8.0]
    assert job_uids(db) == ["1.2.3.1"]


def test_run_loop_retries_failed_write_backs_also_while_the_pacs_is_down(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    import cds.fhir.writeback as writeback

    sweeps: list[bool] = []
    fake = FakeOrthanc()
    fake.down = True

    def sweep(db: Database, settings: Settings) -> int:
        sweeps.append(fake.down)
        return 0

    monkeypatch.setattr(writeback, "retry_due_writebacks", sweep)
    stop = threading.Event()
    waits: list[float] = []

    def wait(delay: float) -> bool:
        waits.append(delay)
        fake.down = len(waits) < 2
        if len(waits) == 3:
            stop.set()
        return stop.is_set()

    monkeypatch.setattr(stop, "wait", cast(Any, wait))
    poller(db, fake).run(stop, interval_s=1.0)
    assert True in sweeps and False in sweeps  # swept with the PACS down and with it up
