"""The write-back lost-update race, against a real FHIR server (sekmet-fhir).

Two write-backs of the same analysis can be in flight at once: the ANALYZE job's (the report
without an explanation) and the EXPLAIN job's (the same report with its rationale and Media), or
a retry sweep's and a job's. Each builds its bundle from the store first and sends it later. If
the one built earlier is delivered last, it must not replace the newer report on the server. The
interleaving is forced here: the older writer is held between building its bundle and sending it
while the newer one completes. (Before the generation check, the older writer's conditional
update silently replaced the report: the rationale and the Media links were gone from the EHR
while the store said "done".)
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from cds.config import Settings
from cds.domain import AnalysisResult, ExplanationStatus
from cds.fhir import codes
from cds.fhir.client import FhirClient
from cds.fhir.writeback import (
    GENERATION_EXTENSION,
    PROVENANCE_TAG_SYSTEM,
    STATE_DONE,
    STATE_FAILED,
    retry_due_writebacks,
    write_back_in_job,
)
from cds.store import queries
from cds.store.db import Database
from cds.store.records import AnalysisRecord

pytestmark = pytest.mark.integration

FHIR_JSON = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
RATIONALE = "Severe central canal stenosis at L4-L5: the dural sac area is 61.8 mm2."
STALE = "stale-writer"


@pytest.fixture
def held_stale_writer(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    """FhirClient.transaction holds the thread named STALE (after its bundle is built, before it
    is sent) until released: (arrived, release)."""
    arrived, release = threading.Event(), threading.Event()
    original = FhirClient.transaction

    def held(self: FhirClient, bundle: Any) -> dict[str, Any]:
        if threading.current_thread().name == STALE and not release.is_set():
            arrived.set()
            assert release.wait(60)
        return original(self, bundle)

    monkeypatch.setattr(FhirClient, "transaction", held)
    yield arrived, release
    release.set()


def seed(db: Database, base: str, analysis: AnalysisResult, study_uid: str) -> str:
    response = requests.post(
        f"{base}/Patient", json={"resourceType": "Patient"}, headers=FHIR_JSON, timeout=10
    )
    assert response.status_code == 201, response.text[:300]
    with db.session() as s:
        queries.upsert_study(s, study_uid, patient_ref=f"Patient/{response.json()['id']}")
        return queries.save_analysis(s, study_uid, analysis).id


def explain(db: Database, data_dir: Path, analysis_id: str) -> None:
    """What the EXPLAIN job stores: a verified rationale and one heatmap overlay."""
    overlay = data_dir / "artifacts" / analysis_id / "gradcam" / "l4-l5-canal.png"
    overlay.parent.mkdir(parents=True, exist_ok=True)
    overlay.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(32))
    heatmap = {"overlay": str(overlay.relative_to(data_dir)), "level": "L4-L5", "condition": "spinal_canal"}
    with db.session() as s:
        queries.save_explanation(
            s,
            analysis_id,
            status=ExplanationStatus.COMPLETE,
            rationale=RATIONALE,
            writer="template",
            heatmaps={"L4-L5/spinal_canal": heatmap},
        )


def search(base: str, resource: str, **params: str) -> list[dict[str, Any]]:
    found = requests.get(f"{base}/{resource}", params=params, headers=FHIR_JSON, timeout=10).json()
    return [e["resource"] for e in found.get("entry") or []]


def the_report(base: str, analysis_id: str) -> dict[str, Any]:
    (report,) = search(
        base, "DiagnosticReport", identifier=f"{codes.ANALYSIS_IDENTIFIER_SYSTEM}|{analysis_id}"
    )
    return report


def state(db: Database, analysis_id: str) -> str | None:
    with db.session(readonly=True) as s:
        record = s.get(AnalysisRecord, analysis_id)
        assert record is not None
        return record.writeback_state


def make_due(db: Database, analysis_id: str) -> None:
    """As after an EHR outage: the write-back is failed and due for the retry sweep."""
    with db.session() as s:
        record = s.get(AnalysisRecord, analysis_id)
        assert record is not None
        record.writeback_state = STATE_FAILED
        record.writeback_next_at = datetime.now(UTC) - timedelta(seconds=1)


def in_job(db: Database, settings: Settings, analysis_id: str) -> Callable[[], None]:
    return lambda: write_back_in_job(db, settings, analysis_id, attempt=1, final_attempt=True)


def in_sweep(db: Database, settings: Settings, analysis_id: str) -> Callable[[], None]:
    def sweep() -> None:
        retry_due_writebacks(db, settings)

    return sweep


@pytest.mark.parametrize(
    "stale_kind", ["analyze job, report not yet on the server", "retry sweep, report on the server"]
)
def test_an_older_write_back_delivered_last_never_replaces_the_newer_report(
    db: Database,
    sekmet_base: str,
    tmp_path: Path,
    analysis: AnalysisResult,
    held_stale_writer: tuple[threading.Event, threading.Event],
    stale_kind: str,
) -> None:
    arrived, release = held_stale_writer
    settings = Settings(database_url="sqlite://", data_dir=tmp_path, fhir_writeback_url=sekmet_base)
    uid = (
        "1.2.826.0.1.3680043.8.498.7701"
        if stale_kind.startswith("analyze")
        else "1.2.826.0.1.3680043.8.498.7702"
    )
    analysis_id = seed(db, sekmet_base, analysis, uid)
    if stale_kind.startswith("analyze"):
        stale_write = in_job(db, settings, analysis_id)  # the ANALYZE job's write-back
    else:
        in_job(db, settings, analysis_id)()  # the ANALYZE job's write-back went through ...
        assert state(db, analysis_id) == STATE_DONE and "presentedForm" not in the_report(
            sekmet_base, analysis_id
        )
        make_due(db, analysis_id)  # ... but its answer was lost (or the EHR failed): due again
        stale_write = in_sweep(db, settings, analysis_id)

    stale = threading.Thread(target=stale_write, name=STALE)
    stale.start()
    assert arrived.wait(60), "the older write-back never reached the server"
    # Meanwhile the explanation is stored and the EXPLAIN job writes the report back with it.
    explain(db, tmp_path, analysis_id)
    in_job(db, settings, analysis_id)()
    newer = the_report(sekmet_base, analysis_id)
    release.set()  # now the older write-back is delivered
    stale.join(60)
    assert not stale.is_alive()

    report = the_report(sekmet_base, analysis_id)
    (form,) = report.get("presentedForm") or [None]
    assert form is not None, "the older write-back replaced the report: the rationale is gone"
    assert RATIONALE in base64.b64decode(form["data"]).decode()
    assert len(report.get("media") or []) == 1
    assert report["meta"]["versionId"] == newer["meta"]["versionId"]  # not rewritten at all
    (provenance,) = search(sekmet_base, "Provenance", _tag=f"{PROVENANCE_TAG_SYSTEM}|{analysis_id}")
    assert report["media"][0]["link"]["reference"] in {t["reference"] for t in provenance["target"]}
    assert state(db, analysis_id) == STATE_DONE

    # Retrying is still idempotent: a due write-back of the newest content leaves one report.
    make_due(db, analysis_id)
    assert retry_due_writebacks(db, settings) == 1
    again = the_report(sekmet_base, analysis_id)
    assert again["id"] == report["id"] and again.get("presentedForm") == report["presentedForm"]
    assert {e["url"]: e["valueInteger"] for e in again["extension"]}[GENERATION_EXTENSION] >= 2
