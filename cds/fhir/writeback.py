"""Write an analysis back to the EHR's FHIR server: one idempotent transaction.

What is written: the DiagnosticReport (status preliminary, basedOn the order when the EHR's
ImagingStudy names one), one Observation per finding, the Device (model versions), a Media per
explanation heatmap when an explanation exists (and its verified rationale, writer named, as the
report's presentedForm, as in the card's report), and a Provenance saying which Device produced
which resources. Everything goes in one transaction Bundle keyed on deterministic identifiers:
Observations, Device and Media are conditional creates (`ifNoneExist`); the DiagnosticReport and
the Provenance are conditional updates (`PUT DiagnosticReport?identifier=...`,
`PUT Provenance?_tag=...`). So a retried or repeated write-back creates nothing new (one report
per analysis), and the write-back after an explanation adds its Media and rationale to the same
report.

Where: the server in CDS_FHIR_WRITEBACK_URL (a system-level credential in
CDS_FHIR_WRITEBACK_TOKEN: a hook's short-lived token is gone by the time a job finishes). The
ImagingStudy (by StudyInstanceUID) is looked up there first, for the patient, the study reference
and the order; cds.fhir.roundtrip_imaging does that lookup.

Durable: each analysis carries a write-back state (analyses.writeback_state: pending -> done, or
failed with writeback_attempts and writeback_next_at). A job whose attempts are used up while the
EHR is down leaves it "failed"; retry_due_writebacks tries again on a long exponential back-off
(5 min doubling, at most 6 h apart) until it is written: a report is never dropped silently. It
runs wherever analyses complete: every job runner (WritebackRetryLoop, a thread of each
LocalRunner and of each Celery pool process), and also after every PACS poll (`cds pacs poll`).
A write-back left "pending" by a worker that died is picked up the same way after PENDING_GRACE.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from cds.config import Settings
from cds.domain import AnalysisResult, AnalysisStatus, Condition, ExplanationStatus, Level
from cds.errors import BadRequest, CdsError, UpstreamError
from cds.fhir import codes
from cds.fhir.client import FhirAccessDenied, FhirClient
from cds.fhir.report import ReportContext, ReportImage, build_report_bundle
from cds.fhir.resources import validate_resource
from cds.fhir.roundtrip_imaging import ehr_client, resolve_imaging_study

if TYPE_CHECKING:
    from cds.store.records import ExplanationRecord

log = logging.getLogger(__name__)

PROVENANCE_TAG_SYSTEM = f"{codes.PROJECT_BASE}/sid/analysis-provenance"

#: analyses.writeback_state values (None: never attempted).
STATE_PENDING = "pending"  # being written (or its writer died: retried after PENDING_GRACE)
STATE_FAILED = "failed"  # the EHR did not take it; retried at writeback_next_at
STATE_DONE = "done"
STATE_SKIPPED = "skipped"  # nothing to write (no Patient known); not retried
#: First retry after a failed write-back; doubles with each further failure, up to RETRY_MAX_DELAY.
RETRY_FIRST_DELAY = timedelta(minutes=5)
RETRY_MAX_DELAY = timedelta(hours=6)
#: A write-back still pending this long was lost with its worker.
PENDING_GRACE = timedelta(minutes=30)
_DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
_PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"


class WritebackUnavailable(CdsError):
    """Nothing can be written (no complete analysis, or no FHIR Patient to write it for)."""

    http_status = 409
    issue_code = "conflict"


@dataclass(frozen=True)
class WritebackResult:
    report_id: str  # the server's DiagnosticReport id
    created: int  # entries the server created
    existing: int  # entries matched by ifNoneExist (already written before)
    attempts: int

    @property
    def idempotent_repeat(self) -> bool:
        return self.created == 0 and self.existing > 0


def _entry(bundle: Mapping[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [e for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type]


def writeback_bundle(
    analysis: AnalysisResult, ctx: ReportContext, *, based_on: Sequence[str] = ()
) -> dict[str, Any]:
    """build_report_bundle plus basedOn and a Provenance entry; validated as an R4 Bundle."""
    bundle = build_report_bundle(analysis, ctx)
    (report,) = _entry(bundle, "DiagnosticReport")
    orders = [ref for ref in based_on if ref.startswith("ServiceRequest/")]
    if orders:
        report["resource"]["basedOn"] = [{"reference": ref} for ref in orders]
    (device,) = _entry(bundle, "Device")
    targets = [report, *_entry(bundle, "Observation"), *_entry(bundle, "Media")]
    tag = {"system": PROVENANCE_TAG_SYSTEM, "code": ctx.analysis_id}
    provenance = {
        "resourceType": "Provenance",
        "meta": {"tag": [tag], "security": [codes.AI_ASSERTED.coding()]},
        "target": [{"reference": e["fullUrl"]} for e in targets],
        "recorded": ctx.issued.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "activity": {"coding": [{"system": _DATA_OPERATION, "code": "CREATE", "display": "create"}]},
        "agent": [
            {
                "type": {"coding": [{"system": _PARTICIPANT_TYPE, "code": "author", "display": "Author"}]},
                "who": {"reference": device["fullUrl"]},
            }
        ],
    }
    provenance_key = f"{PROVENANCE_TAG_SYSTEM}/{ctx.analysis_id}"
    bundle["entry"].append(
        {
            "fullUrl": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, provenance_key)}",
            "resource": provenance,
            "request": {
                "method": "PUT",
                "url": "Provenance?" + urlencode({"_tag": f"{tag['system']}|{tag['code']}"}, safe=":/|"),
            },
        }
    )
    # The report (and its Provenance) are conditional *updates* on the analysis identifier: still
    # one resource per analysis however often this runs, and a later write-back (after the
    # explanation, with Media) updates it instead of being ignored like a matched create.
    report["request"] = {"method": "PUT", "url": f"DiagnosticReport?{report['request']['ifNoneExist']}"}
    return validate_resource(bundle, "Bundle", normalise=False)


def _location_id(response: Mapping[str, Any]) -> str:
    """The id in a transaction-response entry's location ('DiagnosticReport/<id>/_history/1')."""
    location = str((response.get("response") or {}).get("location") or "")
    parts = urlsplit(location).path.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    return parts[-1] if parts else ""


def write_back(
    client: FhirClient,
    analysis: AnalysisResult,
    ctx: ReportContext,
    *,
    based_on: Sequence[str] = (),
    attempts: int = 3,
    backoff_s: float = 1.0,
) -> WritebackResult:
    """POST the transaction; retry transient failures (safe: every entry is a conditional create)."""
    bundle = writeback_bundle(analysis, ctx, based_on=based_on)
    report_index = next(
        i for i, e in enumerate(bundle["entry"]) if e["resource"]["resourceType"] == "DiagnosticReport"
    )
    for attempt in range(1, attempts + 1):
        try:
            response = client.transaction(bundle)
            break
        except FhirAccessDenied:
            raise
        except UpstreamError:
            if attempt == attempts:
                raise
            log.warning("FHIR write-back attempt %d failed; retrying", attempt)
            time.sleep(backoff_s * 2 ** (attempt - 1))
    entries = response.get("entry") or []
    if len(entries) != len(bundle["entry"]):
        raise UpstreamError("FHIR server answered the transaction with a different number of entries")
    statuses = [str((e.get("response") or {}).get("status", "")) for e in entries]
    created = sum(s.startswith("201") for s in statuses)
    existing = sum(s.startswith("200") for s in statuses)
    if created + existing != len(statuses):
        raise UpstreamError("FHIR server did not accept every entry of the write-back")
    report_id = _location_id(entries[report_index])
    if not report_id:
        raise UpstreamError("FHIR server did not say where the DiagnosticReport is")
    return WritebackResult(report_id, created, existing, attempt)


def explanation_images(data_dir: Path, heatmaps: Mapping[str, Any]) -> tuple[ReportImage, ...]:
    """Media content from stored heatmaps (overlay PNGs under data_dir/artifacts; others skipped)."""
    root = (data_dir / "artifacts").resolve()
    images: list[ReportImage] = []
    for key, item in sorted(heatmaps.items()):
        if not isinstance(item, Mapping) or not isinstance(item.get("overlay"), str):
            continue
        path = (data_dir / item["overlay"]).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            continue
        try:
            level, condition = Level(str(item.get("level"))), Condition(str(item.get("condition")))
        except ValueError:
            continue
        images.append(
            ReportImage(
                key=key.replace("/", "-").replace("_", "-"),
                title=f"Grad-CAM heatmap {level.value} {condition.value.replace('_', ' ')}",
                data=path.read_bytes(),
                level=level,
                condition=condition,
            )
        )
    return tuple(images)


def explanation_rationale(explanation: ExplanationRecord | None) -> tuple[str | None, str | None]:
    """(rationale, writer) of a finished explanation for presentedForm, else (None, None).

    Only the explain job stores a COMPLETE record, and only with text that passed the verifier (or
    the template's): that text goes out as stored, with its writer, as in the card's report. A row
    without text or writer adds nothing, so the findings are still written back.
    """
    if explanation is None or explanation.status is not ExplanationStatus.COMPLETE:
        return None, None
    text, writer = explanation.rationale, explanation.writer
    if not text or not text.strip() or not writer:
        return None, None
    return text, writer


def write_back_analysis(db: Any, settings: Settings, analysis_id: str) -> WritebackResult | None:
    """Write the stored analysis to CDS_FHIR_WRITEBACK_URL; None when write-back is not configured."""
    if not settings.fhir_writeback_url:
        return None
    from cds.store import queries

    with db.session(readonly=True) as s:
        record = queries.get_analysis(s, analysis_id)
        if record is None or record.status is not AnalysisStatus.COMPLETE:
            raise WritebackUnavailable("only a complete analysis can be written back")
        result = record.to_result()
        study = record.study
        study_uid, stored_patient, study_date = study.study_uid, study.patient_ref, study.study_date
        issued = record.finished_at or record.updated_at or datetime.now(UTC)
        explanation = record.explanation
        heatmaps = dict(explanation.heatmaps) if explanation is not None and explanation.heatmaps else {}
        rationale, rationale_writer = explanation_rationale(explanation)
    client = ehr_client(settings)
    found = resolve_imaging_study(client, study_uid)
    if found is not None:
        patient_ref = found.patient_ref
    elif stored_patient and stored_patient.startswith("Patient/"):
        patient_ref = stored_patient
    else:
        raise WritebackUnavailable("the EHR has no ImagingStudy for this study and no Patient is known")
    try:
        ctx = ReportContext(
            analysis_id=analysis_id,
            patient_ref=patient_ref,
            issued=issued if issued.tzinfo else issued.replace(tzinfo=UTC),
            study_uid=study_uid,
            imaging_study_ref=found.reference if found is not None else None,
            study_date=study_date,
            images=explanation_images(settings.data_dir, heatmaps),
            rationale=rationale,
            rationale_writer=rationale_writer,
        )
    except BadRequest as exc:
        raise WritebackUnavailable(f"cannot build the report context ({exc.message})") from exc
    return write_back(client, result, ctx, based_on=found.based_on if found is not None else ())


def retry_delay(failures: int) -> timedelta:
    """Wait after the n-th failed write-back round (n >= 1)."""
    return min(RETRY_FIRST_DELAY * 2 ** min(max(0, failures - 1), 16), RETRY_MAX_DELAY)


def _set_state(db: Any, analysis_id: str, state: str, *, now: datetime | None = None) -> datetime | None:
    """Store the write-back state; a failure counts one more round and schedules the next one."""
    import sqlalchemy as sa

    from cds.store.records import AnalysisRecord

    now = now or datetime.now(UTC)
    with db.session() as s:
        record = s.get(AnalysisRecord, analysis_id)
        if record is None:
            return None
        record.writeback_state = state
        if state == STATE_FAILED:
            record.writeback_attempts = (record.writeback_attempts or 0) + 1
            record.writeback_next_at = now + retry_delay(record.writeback_attempts)
        elif state == STATE_PENDING:
            record.writeback_next_at = now + PENDING_GRACE
        else:
            record.writeback_next_at = None
            if state == STATE_DONE:
                record.writeback_attempts = 0
        s.flush()
        next_at: datetime | None = s.scalar(
            sa.select(AnalysisRecord.writeback_next_at).where(AnalysisRecord.id == analysis_id)
        )
        return next_at


def _write_and_record(db: Any, settings: Settings, analysis_id: str) -> WritebackResult | None:
    """write_back_analysis, with the outcome stored (done / skipped); failures raise unrecorded."""
    try:
        written = write_back_analysis(db, settings, analysis_id)
    except WritebackUnavailable as exc:
        log.info("FHIR write-back skipped: %s", exc.message)
        _set_state(db, analysis_id, STATE_SKIPPED)
        return None
    _set_state(db, analysis_id, STATE_DONE)
    return written


def retry_due_writebacks(db: Any, settings: Settings, *, now: datetime | None = None, limit: int = 20) -> int:
    """Retry write-backs that failed (or were lost) once their back-off is over; how many succeeded.

    Concurrent sweepers are safe: each claims an analysis by moving its next try forward in one
    conditional UPDATE, and the transaction itself is idempotent anyway.
    """
    if not settings.fhir_writeback_url:
        return 0
    import sqlalchemy as sa

    from cds.store.records import AnalysisRecord

    now = now or datetime.now(UTC)
    due_filter = (
        AnalysisRecord.writeback_state.in_((STATE_PENDING, STATE_FAILED)),
        AnalysisRecord.writeback_next_at <= now,
    )
    with db.session(readonly=True) as s:
        due = list(
            s.scalars(
                sa.select(AnalysisRecord.id)
                .where(*due_filter)
                .order_by(AnalysisRecord.writeback_next_at)
                .limit(limit)
            )
        )
    written = 0
    for analysis_id in due:
        with db.session() as s:
            claimed = s.execute(
                sa.update(AnalysisRecord)
                .where(AnalysisRecord.id == analysis_id, *due_filter)
                .values(writeback_state=STATE_PENDING, writeback_next_at=now + PENDING_GRACE)
            ).rowcount
        if not claimed:
            continue
        try:
            if _write_and_record(db, settings, analysis_id) is not None:
                written += 1
        except Exception as exc:  # EHR still down (or anything else): next round, never dropped
            next_at = _set_state(db, analysis_id, STATE_FAILED, now=now)
            log.warning("FHIR write-back retry failed (%s); next try at %s", type(exc).__name__, next_at)
    return written


#: How often a job runner looks for due write-backs (the back-off itself starts at 5 minutes).
RETRY_SWEEP_INTERVAL_S = 60.0


class WritebackRetryLoop:
    """A daemon thread that runs retry_due_writebacks every interval, in a job-running process.

    Started by each LocalRunner and in each Celery pool process (which never forks again, so its
    own Database is safe to use from a thread), only when CDS_FHIR_WRITEBACK_URL is set. Every
    runner sweeps; the conditional claim in retry_due_writebacks makes concurrent sweepers write
    each report once, and the transaction is idempotent (conditional creates) should two ever race.
    """

    def __init__(self, db: Any, settings: Settings, interval_s: float = RETRY_SWEEP_INTERVAL_S) -> None:
        self._db = db
        self._settings = settings
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                written = retry_due_writebacks(self._db, self._settings)
            except Exception as exc:  # the database briefly away: next round
                log.warning("FHIR write-back retry sweep failed (%s)", type(exc).__name__)
                continue
            if written:
                log.info("%d failed FHIR write-back(s) written on retry", written)

    def start(self) -> bool:
        """Start the thread (no-op without CDS_FHIR_WRITEBACK_URL); whether it runs."""
        if not self._settings.fhir_writeback_url:
            return False
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="cds-writeback-retry", daemon=True)
            self._thread.start()
        return True

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None


def write_back_in_job(
    db: Any, settings: Settings, analysis_id: str, *, attempt: int, final_attempt: bool
) -> None:
    """The write-back as a job step (after ANALYZE, and again after EXPLAIN for the Media).

    No-op unless CDS_FHIR_WRITEBACK_URL is set. Nothing to write (incomplete, no Patient) is logged
    and skipped; a server failure raises (the job attempt fails and its retry redoes only this
    step, the transaction being idempotent), except on the last attempt, where the write-back is
    stored as failed and left to retry_due_writebacks (long back-off) instead of being dropped.
    """
    if not settings.fhir_writeback_url:
        return
    _set_state(db, analysis_id, STATE_PENDING)
    try:
        written = _write_and_record(db, settings, analysis_id)
    except CdsError as exc:
        if final_attempt:
            next_at = _set_state(db, analysis_id, STATE_FAILED)
            log.error(
                "FHIR write-back failed after %d attempts (%s); retried later, next at %s",
                attempt, type(exc).__name__, next_at,
            )  # fmt: skip
            return
        raise
    if written is not None:
        log.info(
            "FHIR write-back: DiagnosticReport %s (%d created, %d matched or updated)",
            written.report_id, written.created, written.existing,
        )  # fmt: skip
