"""The viewer's ``?card=`` lookup reads issued_cards (migration 0008), an index filled by a trigger
wherever hook_calls.card_uuids is written; on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from cds.hooks.hotstore import AuditRow, HotStore
from cds.signing import CardIdSigner
from cds.store.db import Database
from cds.store.migrate import upgrade
from cds.store.records import HookCallRecord, IssuedCardRecord
from cds.viewer.feedback import linked_card_uuid

SERVICE = "lumbar-mri-patient-view"
SIGNER = CardIdSigner("test-secret-key-0123456789abcdef0123")


def _audit(db: Database, patient: str, uuids: list[str]) -> None:
    """One audit row written the way the hook hot path writes it (driver-level INSERT)."""
    HotStore(db).audit(
        AuditRow(
            hook_instance=str(uuid.uuid4()),
            service_id=SERVICE,
            hook="patient-view",
            patient_ref=patient,
            latency_ms=1.0,
            outcome="cards",
            status_code=200,
            card_count=len(uuids),
            card_uuids=" ".join(uuids) or None,
        )
    )


def _issued(db: Database) -> dict[str, str | None]:
    with db.session(readonly=True) as s:
        rows = s.execute(
            sa.select(IssuedCardRecord.card_uuid, HookCallRecord.patient_ref).join(
                HookCallRecord, HookCallRecord.id == IssuedCardRecord.hook_call_id
            )
        ).all()
    return {card: patient for card, patient in rows}


def test_every_card_uuid_an_audit_row_names_is_indexed_with_its_call(db: Database) -> None:
    a, b, c = (SIGNER.issue(SERVICE) for _ in range(3))
    _audit(db, "Patient/p1", [a, b])
    _audit(db, "Patient/p2", [c])
    _audit(db, "Patient/p3", [])  # no cards: no rows
    assert _issued(db) == {a: "Patient/p1", b: "Patient/p1", c: "Patient/p2"}


def test_the_orm_path_fills_the_index_too(db: Database) -> None:
    card = SIGNER.issue(SERVICE)
    with db.session() as s:
        s.add(HookCallRecord(hook_instance="h", service_id=SERVICE, hook="patient-view",
                             patient_ref="Patient/p9", latency_ms=1.0, outcome="cards",
                             status_code=200, card_count=1, card_uuids=card))  # fmt: skip
    assert _issued(db) == {card: "Patient/p9"}


def test_linked_card_uuid_finds_the_call_through_the_index(db: Database) -> None:
    mine, theirs = SIGNER.issue(SERVICE), SIGNER.issue(SERVICE)
    _audit(db, "Patient/p1", [mine])
    _audit(db, "Patient/p2", [theirs])
    with db.session(readonly=True) as s:
        assert linked_card_uuid(s, mine, "Patient/p1", SIGNER) == mine
        assert linked_card_uuid(s, theirs, "Patient/p1", SIGNER) is None  # another patient's card
        assert linked_card_uuid(s, str(uuid.uuid4()), "Patient/p1", SIGNER) is None  # never issued
        other = CardIdSigner("another-deployment-secret-0123456789")
        assert linked_card_uuid(s, mine, "Patient/p1", other) is None  # tag not ours


def test_the_lookup_is_an_index_search_not_a_scan(db: Database) -> None:
    query = (
        sa.select(HookCallRecord.service_id, HookCallRecord.patient_ref)
        .join(IssuedCardRecord, IssuedCardRecord.hook_call_id == HookCallRecord.id)
        .where(IssuedCardRecord.card_uuid == "00000000-0000-4000-8000-000000000000")
    )
    sql = str(query.compile(db.engine, compile_kwargs={"literal_binds": True}))
    with db.engine.connect() as conn:
        if db.is_sqlite:
            plan = " ".join(str(r[-1]) for r in conn.execute(sa.text("EXPLAIN QUERY PLAN " + sql)))
            assert "SCAN" not in plan, plan
            assert "SEARCH issued_cards USING" in plan, plan
        else:
            conn.execute(sa.text("SET enable_seqscan = off"))  # tiny tables: ask whether an index exists
            plan = " ".join(str(r[0]) for r in conn.execute(sa.text("EXPLAIN " + sql)))
            assert "Seq Scan on issued_cards" not in plan and "Seq Scan on hook_calls" not in plan, plan


def test_migration_backfills_audit_rows_written_before_it(database_url: str) -> None:
    upgrade(database_url, "0007")
    db = Database(database_url)
    a, b = SIGNER.issue(SERVICE), SIGNER.issue(SERVICE)
    try:
        with db.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO hook_calls (hook_instance, service_id, hook, patient_ref, latency_ms,"
                    " outcome, status_code, card_count, card_uuids, created_at) VALUES"
                    " ('h1', :s, 'patient-view', 'Patient/old', 1.0, 'cards', 200, 2, :u,"
                    " '2026-11-23 08:00:00'),"
                    " ('h2', :s, 'patient-view', 'Patient/none', 1.0, 'no-cards', 200, 0, NULL,"
                    " '2026-11-23 08:00:01')"
                ),
                {"s": SERVICE, "u": f"{a} {b}"},
            )
        upgrade(database_url)
        assert _issued(db) == {a: "Patient/old", b: "Patient/old"}
        _audit(db, "Patient/new", [c := SIGNER.issue(SERVICE)])  # and the trigger works after it
        assert _issued(db)[c] == "Patient/new"
    finally:
        db.dispose()
