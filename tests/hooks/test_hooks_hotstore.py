"""The hot path's driver-level statements agree with the ORM records, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta

import pytest
import sqlalchemy as sa

import cds.hooks.hotstore as hotstore
from cds.domain import AnalysisResult, AnalysisStatus, Condition, Finding, Grade, Level
from cds.hooks.hotstore import AuditRow, HotStore
from cds.hooks.replay import claim_token
from cds.store import queries
from cds.store.db import Database
from cds.store.records import HookCallRecord, SeenTokenRecord

UID = "1.2.826.0.1.3680043.8.498.4242"


def test_claim_is_true_once_and_shares_the_orm_claims_table(db: Database) -> None:
    store = HotStore(db)
    expires = datetime.now(UTC) + timedelta(minutes=5)
    assert store.claim("https://a", "j1", expires) is True
    assert store.claim("https://a", "j1", expires) is False
    assert store.claim("https://b", "j1", expires) is True  # jti is per issuer
    with db.engine.begin() as conn:  # the ORM-side claim sees the driver-side row, and back
        assert claim_token(conn, "https://a", "j1", expires) is False
        assert claim_token(conn, "https://a", "j2", expires) is True
    assert store.claim("https://a", "j2", expires) is False
    with db.session(readonly=True) as s:
        row = s.scalars(sa.select(SeenTokenRecord).where(SeenTokenRecord.jti == "j1")).first()
        assert row is not None and row.expires_at == expires


def test_claim_races_have_one_winner_across_threads(db: Database) -> None:
    store = HotStore(db)
    expires = datetime.now(UTC) + timedelta(minutes=5)
    start, results, lock = threading.Barrier(6), [], threading.Lock()

    def claim() -> None:
        start.wait()
        won = store.claim("https://a", "raced", expires)
        with lock:
            results.append(won)

    threads = [threading.Thread(target=claim) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 5 + [True]


def test_expired_claims_are_purged(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    store = HotStore(db)
    store.claim("https://a", "old", datetime.now(UTC) - timedelta(minutes=5))
    monkeypatch.setattr(hotstore, "PURGE_EVERY", 1)
    store.claim("https://a", "new", datetime.now(UTC) + timedelta(minutes=5))
    with db.session(readonly=True) as s:
        assert s.scalars(sa.select(SeenTokenRecord.jti)).all() == ["new"]


def test_audit_row_reads_back_through_the_orm(db: Database) -> None:
    before = datetime.now(UTC)
    HotStore(db).audit(AuditRow("inst-1", "svc", "patient-view", "Patient/p1", 3.5, "cards", 200, 1))
    with db.session(readonly=True) as s:
        row = s.scalars(sa.select(HookCallRecord)).one()
    assert (row.hook_instance, row.service_id, row.hook, row.patient_ref) == (
        "inst-1",
        "svc",
        "patient-view",
        "Patient/p1",
    )
    assert (row.latency_ms, row.outcome, row.status_code, row.card_count) == (3.5, "cards", 200, 1)
    assert row.created_at.tzinfo is not None and before <= row.created_at <= datetime.now(UTC)


def test_status_rows_equal_the_orm_values(db: Database) -> None:
    finding = Finding(Level.L4_L5, Condition.SPINAL_CANAL, Grade.SEVERE, 0.9, {})
    with db.session() as s:
        queries.upsert_study(s, UID, patient_ref="Patient/p1", study_date=date(2026, 7, 1), source_uri="/x")
        saved = queries.save_analysis(s, UID, AnalysisResult(AnalysisStatus.COMPLETE, (finding,)))
        analysis_id = saved.id
    with db.session(readonly=True) as s:
        record = queries.get_analysis(s, analysis_id)
        assert record is not None
        expected = (record.status, record.reason, record.revision, record.created_at, record.updated_at)
        finished = record.finished_at
    rows = HotStore(db).analysis_status([UID, "1.2.3.unknown"])
    assert len(rows) == 1
    row = rows[0]
    assert (row.study_uid, row.patient_ref, row.id) == (UID, "Patient/p1", analysis_id)
    assert (row.status, row.reason, row.revision, row.created_at, row.updated_at) == expected
    assert row.finished_at == finished
    assert row.updated_at is not None and row.updated_at.tzinfo is not None
    assert HotStore(db).analysis_status([]) == []


def test_a_failed_statement_discards_the_connection(db: Database) -> None:
    store = HotStore(db)
    first = db.driver_connection()
    with pytest.raises(Exception):  # noqa: B017 - the driver's own error type differs per backend
        store._execute("SELECT * FROM no_such_table", ())
    assert store.claim("https://a", "after-error", datetime.now(UTC) + timedelta(minutes=1)) is True
    if db.url.database not in (None, "", ":memory:"):
        assert db.driver_connection() is not first
