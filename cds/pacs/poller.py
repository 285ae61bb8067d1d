"""The pull path: follow Orthanc's /changes feed and take in every StableStudy change.

Why a poller next to the Lua push: a push is fire-and-forget (Orthanc does not retry a failed
HttpPost, and notifications sent while this service is down are lost); the poller reads the PACS's
own durable change log from a cursor persisted in the database, so it catches up after any
outage. Both paths may see the same study: intake is idempotent, so that costs nothing.
The cursor moves only past changes that were handled; a PACS or database failure mid-page leaves
it at the last handled change, and the next poll resumes there.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from cds.config import Settings
from cds.errors import NotFound
from cds.jobs.queue import JobQueue
from cds.pacs.cursor import load_cursor, reset_cursor, save_cursor
from cds.pacs.intake import accept_stable_study
from cds.pacs.orthanc import STABLE_STUDY, OrthancClient
from cds.pacs.retry import retry_due_failures
from cds.pacs.study import InvalidStudyInfo
from cds.store.db import Database

log = logging.getLogger(__name__)

DEFAULT_FEED = "orthanc"


@dataclass(frozen=True)
class PollReport:
    changes: int = 0  # changes read
    stable_studies: int = 0
    queued: int = 0  # lumbar MRIs whose analysis is queued (or already existed)
    skipped: int = 0  # not lumbar MRI, gone from the PACS, or unusable headers
    cursor: int = 0
    done: bool = True


class ChangePoller:
    def __init__(
        self,
        db: Database,
        jobs: JobQueue,
        settings: Settings,
        orthanc: OrthancClient,
        *,
        feed: str = DEFAULT_FEED,
        page_size: int = 100,
    ) -> None:
        self.db = db
        self.jobs = jobs
        self.settings = settings
        self.orthanc = orthanc
        self.feed = feed
        self.page_size = page_size

    def start_from_now(self) -> int:
        """Initialise a never-read cursor at the PACS's newest change (skip the history)."""
        current = load_cursor(self.db, self.feed)
        if current is None:
            current = self.orthanc.last_change()
            save_cursor(self.db, self.feed, current)
        return current

    def poll_once(self) -> PollReport:
        """Read one page of changes from the cursor and handle it; the cursor follows."""
        since = load_cursor(self.db, self.feed) or 0
        page = self.orthanc.changes(since, self.page_size)
        if not page.changes and page.last < since:
            # Orthanc's newest change is older than our cursor: its database was recreated and
            # its Seq restarted. Keeping the cursor would skip every new study until the numbers
            # pass it again, so start over (repeated studies are harmless: intake is idempotent).
            log.warning(
                "pacs poll: the PACS change log restarted (last change %d < cursor %d); cursor reset to 0",
                page.last, since,
            )  # fmt: skip
            reset_cursor(self.db, self.feed, 0)
            return PollReport(cursor=0, done=False)
        stable = queued = skipped = 0
        handled = since
        for change in page.changes:
            if change.change_type == STABLE_STUDY:
                stable += 1
                if self._take(change.resource_id):
                    queued += 1
                else:
                    skipped += 1
                # Saved after each handled study (not after each of the far more numerous
                # NewInstance changes): a failure later in the page re-reads only unhandled work.
                save_cursor(self.db, self.feed, change.seq)
            handled = change.seq
        cursor = max(handled, page.last)
        save_cursor(self.db, self.feed, cursor)
        return PollReport(len(page.changes), stable, queued, skipped, cursor, page.done)

    def _take(self, orthanc_id: str) -> bool:
        try:
            study = self.orthanc.stable_study(orthanc_id)
        except NotFound:  # deleted since it became stable
            return False
        except InvalidStudyInfo as exc:
            log.warning("pacs poll: unusable study headers (%s)", exc.message)
            return False
        return accept_stable_study(self.db, self.jobs, self.settings, study).accepted

    def _retry_writebacks(self) -> None:
        """Failed FHIR write-backs (EHR down longer than their job's retries) are retried from here:
        the poller runs in every deployment with a PACS (compose service pacs-poller)."""
        try:
            from cds.fhir.writeback import retry_due_writebacks

            rewritten = retry_due_writebacks(self.db, self.settings)
        except Exception as exc:  # a convenience of the loop: never stop polling for it
            log.warning("pacs poll: write-back retry sweep failed (%s)", type(exc).__name__)
            return
        if rewritten:
            log.info("pacs poll: %d failed FHIR write-backs written on retry", rewritten)

    def run(self, stop: threading.Event, interval_s: float) -> None:
        """Poll until `stop` is set: at once while pages are full, else every interval_s; a failing
        PACS or database backs off (doubling, up to 10 intervals) without moving the cursor. After
        each poll, analyses that failed retryably (PACS outage) get a new attempt once due, and so do
        FHIR write-backs that failed (EHR outage; cds.fhir.writeback.retry_due_writebacks)."""
        delay = interval_s
        while not stop.is_set():
            try:
                report = self.poll_once()
            except Exception as exc:  # keep polling: the PACS or database may come back
                log.warning("pacs poll failed (%s); retrying in %.0f s", type(exc).__name__, delay)
                self._retry_writebacks()  # the EHR does not depend on the PACS being up
                stop.wait(delay)
                delay = min(delay * 2, interval_s * 10)
                continue
            delay = interval_s
            try:
                retried = retry_due_failures(self.db, self.jobs)
            except Exception as exc:  # the sweep is a convenience: never stop polling for it
                log.warning("pacs poll: retry sweep failed (%s)", type(exc).__name__)
                retried = 0
            if retried:
                log.info("pacs poll: %d failed analyses retried after their back-off", retried)
            self._retry_writebacks()
            if report.stable_studies:
                log.info(
                    "pacs poll: %d stable studies, %d queued, %d skipped (cursor %d)",
                    report.stable_studies, report.queued, report.skipped, report.cursor,
                )  # fmt: skip
            if report.done:
                stop.wait(interval_s)
