"""Write an analysis back to the EHR's FHIR server: one idempotent transaction.

What is written: the DiagnosticReport (status preliminary, basedOn the order when the EHR's
ImagingStudy names one), one Observation per finding, the Device (model versions), a Media per
explanation heatmap when an explanation exists (and its verified rationale, writer named, as the
report's presentedForm, as in the card's report), and a Provenance saying which Device produced
which resources. Everything goes in one transaction Bundle keyed on deterministic identifiers:
Observations, Device and Media are conditional creates (`ifNoneExist`). So a retried or repeated
write-back creates nothing new (one report per analysis), and the write-back after an explanation
adds its Media and rationale to the same report.

Newest wins (no lost update). An analysis is written back several times: after the analysis,
after its explanation (rationale and Media added), and by retries; two of these can be in flight
at once, each sending content it read from the store earlier. Every write-back request bumps
analyses.writeback_generation (migration 0010); a write-back reads the generation together with
the content, and the report carries it (extension GENERATION_EXTENSION). Before writing, the
report is looked up by the analysis identifier: a report of a newer generation is left alone
(the write-back is "superseded"); otherwise the transaction replaces it as a versioned update
(`PUT DiagnosticReport/<id>` with `ifMatch` on the version just read, and the Provenance as a
conditional update in the same transaction), or creates it (`POST` with `ifNoneExist`, the
Provenance likewise). A writer that lost a race in between (412/409 on the If-Match, or its
create matched a report someone else created first) looks again. The whole transaction is atomic,
so an older writer changes nothing at all. Only the writer of the newest generation records the
outcome (compare-and-set on the generation), so an older writer's "done" or "failed" can never
hide the newer write-back's state.

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

import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlencode, urlsplit

from cds.config import Settings
from cds.domain import AnalysisResult, AnalysisStatus, Condition, ExplanationStatus, Level
from cds.errors import BadRequest, CdsError, UpstreamError
from cds.fhir import codes
from cds.fhir.client import FhirAccessDenied, FhirClient, FhirVersionConflict
from cds.fhir.report import ReportContext, ReportImage, build_report_bundle
from cds.fhir.resources import validate_resource
from cds.fhir.roundtrip_imaging import ehr_client, resolve_imaging_study

if TYPE_CHECKING:
    from cds.store.records import ExplanationRecord

log = logging.getLogger(__name__)
_T = TypeVar("_T")

PROVENANCE_TAG_SYSTEM = f"{codes.PROJECT_BASE}/sid/analysis-provenance"
#: DiagnosticReport extension (valueInteger): the write-back generation the report was written at.
GENERATION_EXTENSION = f"{codes.PROJECT_BASE}/StructureDefinition/writeback-generation"
#: Look-then-write rounds when other writers keep getting in between (each round re-reads).
CONFLICT_ROUNDS = 5

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
    existing: int  # entries matched by ifNoneExist or updated (already written before)
    attempts: int  # transactions sent (transient retries and lost races included)
    #: The write-back generation this content was read at (analyses.writeback_generation).
    generation: int = 0
    #: The server already held a report of a newer generation: nothing was written.
    superseded: bool = False

    @property
    def idempotent_repeat(self) -> bool:
        return self.created == 0 and self.existing > 0


@dataclass(frozen=True)
class ServerReport:
    """The analysis's DiagnosticReport as the FHIR server holds it now."""

    id: str
    version: str | None  # meta.versionId (None: the server does not version resources)
    generation: int  # GENERATION_EXTENSION (0: written before generations existed)

    @classmethod
    def of(cls, resource: Mapping[str, Any]) -> ServerReport:
        generation = 0
        for ext in resource.get("extension") or ():
            if isinstance(ext, Mapping) and ext.get("url") == GENERATION_EXTENSION:
                value = ext.get("valueInteger")
                generation = value if isinstance(value, int) else 0
        version = (resource.get("meta") or {}).get("versionId")
        return cls(str(resource.get("id") or ""), str(version) if version else None, generation)


def find_report(client: FhirClient, analysis_id: str) -> ServerReport | None:
    """The report carrying this analysis's identifier on the server, or None."""
    found = client.search_resources(
        "DiagnosticReport", {"identifier": f"{codes.ANALYSIS_IDENTIFIER_SYSTEM}|{analysis_id}"}
    )
    reports = [r for r in found if r.get("resourceType") == "DiagnosticReport" and r.get("id")]
    if len(reports) > 1:
        raise UpstreamError(
            f"{len(reports)} DiagnosticReports on the FHIR server carry one analysis identifier"
        )
    return ServerReport.of(reports[0]) if reports else None


def _entry(bundle: Mapping[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [e for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type]


def writeback_bundle(
    analysis: AnalysisResult,
    ctx: ReportContext,
    *,
    based_on: Sequence[str] = (),
    generation: int = 0,
    current: ServerReport | None = None,
) -> dict[str, Any]:
    """build_report_bundle plus basedOn, the generation and a Provenance entry; validated as R4.

    `current`: the report already on the server (found by find_report), replaced by a versioned
    update; None: the report is created unless one appeared meanwhile (conditional create).
    """
    bundle = build_report_bundle(analysis, ctx)
    (report,) = _entry(bundle, "DiagnosticReport")
    orders = [ref for ref in based_on if ref.startswith("ServiceRequest/")]
    if orders:
        report["resource"]["basedOn"] = [{"reference": ref} for ref in orders]
    report["resource"]["extension"] = [
        *report["resource"].get("extension", []),
        {"url": GENERATION_EXTENSION, "valueInteger": generation},
    ]
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
    provenance_query = urlencode({"_tag": f"{tag['system']}|{tag['code']}"}, safe=":/|")
    if current is None:
        # Create both, unless a concurrent writer created them first: then nothing of ours
        # replaces theirs (the report entry answers 200 and write_back looks again).
        provenance_request = {"method": "POST", "url": "Provenance", "ifNoneExist": provenance_query}
    else:
        # Replace both: guarded by the report's If-Match in the same (atomic) transaction.
        provenance_request = {"method": "PUT", "url": f"Provenance?{provenance_query}"}
        report["resource"]["id"] = current.id
        report["request"] = {"method": "PUT", "url": f"DiagnosticReport/{current.id}"}
        if current.version is not None:
            report["request"]["ifMatch"] = f'W/"{current.version}"'
    bundle["entry"].append(
        {
            "fullUrl": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, provenance_key)}",
            "resource": provenance,
            "request": provenance_request,
        }
    )
    return validate_resource(bundle, "Bundle", normalise=False)


def _location_id(response: Mapping[str, Any]) -> str:
    """The id in a transaction-response entry's location ('DiagnosticReport/<id>/_history/1')."""
    location = str((response.get("response") or {}).get("location") or "")
    parts = urlsplit(location).path.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    return parts[-1] if parts else ""


def _retrying(call: Callable[[], _T], attempts: int, backoff_s: float) -> _T:
    """call(), retried on transient failures (not on refused access or a version conflict)."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except (FhirAccessDenied, FhirVersionConflict):
            raise
        except UpstreamError:
            if attempt == attempts:
                raise
            log.warning("FHIR write-back request failed (attempt %d); retrying", attempt)
            time.sleep(backoff_s * 2 ** (attempt - 1))
    raise AssertionError("unreachable")  # pragma: no cover


def write_back(
    client: FhirClient,
    analysis: AnalysisResult,
    ctx: ReportContext,
    *,
    based_on: Sequence[str] = (),
    generation: int = 0,
    attempts: int = 3,
    backoff_s: float = 1.0,
) -> WritebackResult:
    """Write the report of `generation` unless the server holds a newer one (module docstring).

    Each request is retried on transient failures (`attempts`, safe: the transaction is
    idempotent); a lost race (version conflict, or a report created meanwhile) re-reads the report
    and decides again, up to CONFLICT_ROUNDS times.
    """
    sent = 0

    def send(bundle: dict[str, Any]) -> dict[str, Any]:
        nonlocal sent
        sent += 1
        return client.transaction(bundle)

    for _round in range(CONFLICT_ROUNDS):
        current = _retrying(lambda: find_report(client, ctx.analysis_id), attempts, backoff_s)
        if current is not None and current.generation > generation:
            log.info(
                "FHIR write-back superseded: the server holds generation %d, this one is %d",
                current.generation, generation,
            )  # fmt: skip
            return WritebackResult(current.id, 0, 0, sent, generation, superseded=True)
        bundle = writeback_bundle(analysis, ctx, based_on=based_on, generation=generation, current=current)
        report_index = next(
            i for i, e in enumerate(bundle["entry"]) if e["resource"]["resourceType"] == "DiagnosticReport"
        )
        try:
            response = _retrying(functools.partial(send, bundle), attempts, backoff_s)
        except FhirVersionConflict:
            log.info("FHIR write-back: the report changed since it was read; looking again")
            continue
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
        if current is None and not statuses[report_index].startswith("201"):
            log.info("FHIR write-back: another writer created the report first; looking again")
            continue
        return WritebackResult(report_id, created, existing, sent, generation)
    raise UpstreamError(f"FHIR write-back lost {CONFLICT_ROUNDS} races with other writers in a row")


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
        generation = record.writeback_generation or 0  # read with the content it goes with
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
    return write_back(
        client, result, ctx, based_on=found.based_on if found is not None else (), generation=generation
    )


def retry_delay(failures: int) -> timedelta:
    """Wait after the n-th failed write-back round (n >= 1)."""
    return min(RETRY_FIRST_DELAY * 2 ** min(max(0, failures - 1), 16), RETRY_MAX_DELAY)


def _locked(s: Any, analysis_id: str) -> Any:
    """The analysis row, locked for this write transaction (SQLite: BEGIN IMMEDIATE already)."""
    from cds.store.records import AnalysisRecord

    return s.get(AnalysisRecord, analysis_id, with_for_update=True)


def request_writeback(db: Any, analysis_id: str, *, now: datetime | None = None) -> int | None:
    """Announce a new write-back of this analysis (its content may have changed): bump the
    generation and mark it pending; the new generation (None: no such analysis)."""
    now = now or datetime.now(UTC)
    with db.session() as s:
        record = _locked(s, analysis_id)
        if record is None:
            return None
        record.writeback_generation = (record.writeback_generation or 0) + 1
        record.writeback_state = STATE_PENDING
        record.writeback_next_at = now + PENDING_GRACE
        return int(record.writeback_generation)


def _set_state(
    db: Any, analysis_id: str, state: str, *, generation: int, now: datetime | None = None
) -> tuple[bool, datetime | None]:
    """Record a write-back outcome, if `generation` is still the newest (compare-and-set): a newer
    write-back requested meanwhile records its own. A failure counts one more round and schedules
    the next. (whether it was recorded, the next try)."""
    now = now or datetime.now(UTC)
    with db.session() as s:
        record = _locked(s, analysis_id)
        if record is None or (record.writeback_generation or 0) != generation:
            return False, None
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
        next_at: datetime | None = record.writeback_next_at
        return True, next_at


def _write_and_record(
    db: Any, settings: Settings, analysis_id: str, generation: int
) -> WritebackResult | None:
    """write_back_analysis, with the outcome stored (done / skipped) if still the newest
    generation; failures raise unrecorded. `generation`: the one this writer was started for (the
    content read may carry a newer one)."""
    try:
        written = write_back_analysis(db, settings, analysis_id)
    except WritebackUnavailable as exc:
        log.info("FHIR write-back skipped: %s", exc.message)
        _set_state(db, analysis_id, STATE_SKIPPED, generation=generation)
        return None
    if written is not None:
        # Superseded: the server holds a newer generation; its writer records the state (if the
        # store's generation is still ours, the server's came from elsewhere: done all the same).
        _set_state(db, analysis_id, STATE_DONE, generation=written.generation)
    return written


def _generation(db: Any, analysis_id: str) -> int:
    from cds.store.records import AnalysisRecord

    with db.session(readonly=True) as s:
        record = s.get(AnalysisRecord, analysis_id)
        return int(record.writeback_generation or 0) if record is not None else 0


def retry_due_writebacks(db: Any, settings: Settings, *, now: datetime | None = None, limit: int = 20) -> int:
    """Retry write-backs that failed (or were lost) once their back-off is over; how many succeeded.

    Concurrent sweepers are safe: each claims an analysis by moving its next try forward in one
    conditional UPDATE; the write itself never replaces a newer report (module docstring).
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
        generation = _generation(db, analysis_id)
        try:
            if _write_and_record(db, settings, analysis_id, generation) is not None:
                written += 1
        except Exception as exc:  # EHR still down (or anything else): next round, never dropped
            recorded, next_at = _set_state(db, analysis_id, STATE_FAILED, generation=generation, now=now)
            then = f"next try at {next_at}" if recorded else "a newer write-back is under way"
            log.warning("FHIR write-back retry failed (%s); %s", type(exc).__name__, then)
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
    generation = request_writeback(db, analysis_id)
    if generation is None:
        return
    try:
        written = _write_and_record(db, settings, analysis_id, generation)
    except CdsError as exc:
        if final_attempt:
            recorded, next_at = _set_state(db, analysis_id, STATE_FAILED, generation=generation)
            log.error(
                "FHIR write-back failed after %d attempts (%s); %s",
                attempt, type(exc).__name__,
                f"retried later, next at {next_at}" if recorded else "a newer write-back is under way",
            )  # fmt: skip
            return
        raise
    if written is not None and written.superseded:
        log.info("FHIR write-back: DiagnosticReport %s already holds a newer write-back", written.report_id)
    elif written is not None:
        log.info(
            "FHIR write-back: DiagnosticReport %s (%d created, %d matched or updated)",
            written.report_id, written.created, written.existing,
        )  # fmt: skip
