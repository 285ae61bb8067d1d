"""Database connection helpers used on the hook hot path: read_connection and independent_writes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from cds.store.db import Database
from cds.store.records import HookCallRecord


def _audit_row(instance: str) -> dict[str, object]:
    return {
        "hook_instance": instance,
        "service_id": "svc",
        "hook": "patient-view",
        "patient_ref": None,
        "latency_ms": 1.0,
        "outcome": "cards",
        "status_code": 200,
        "card_count": 1,
        "created_at": datetime.now(UTC),
    }


def _count(db: Database) -> int:
    with db.read_connection() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(HookCallRecord)).scalar_one())


def test_independent_writes_are_committed(db: Database) -> None:
    with db.independent_writes() as conn:
        conn.execute(sa.insert(HookCallRecord), _audit_row("a"))
        conn.execute(sa.insert(HookCallRecord), _audit_row("b"))
    assert _count(db) == 2


def test_independent_writes_on_a_sqlite_file_commit_each_statement_at_once(db: Database) -> None:
    if not db.is_sqlite:
        pytest.skip("PostgreSQL runs them in one transaction")
    with db.independent_writes() as conn:
        conn.execute(sa.insert(HookCallRecord), _audit_row("a"))
        # Visible to another connection before the block ends: the write lock is already released.
        assert _count(db) == 1


def test_read_connection_refuses_writes(db: Database) -> None:
    with pytest.raises(sa.exc.DBAPIError), db.read_connection() as conn:
        conn.execute(sa.insert(HookCallRecord), _audit_row("a"))
    assert _count(db) == 0
