"""The database replay guard: one first use per (issuer, jti), even under concurrent claims."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from cds.hooks.replay import claim_token
from cds.hooks.runtime import DatabaseReplayGuard
from cds.store.db import Database
from cds.store.records import SeenTokenRecord


def test_first_use_then_replay(db: Database) -> None:
    guard = DatabaseReplayGuard(db)
    expires = datetime.now(UTC) + timedelta(minutes=5)
    assert guard.first_use("https://a", "jti-1", expires)
    assert not guard.first_use("https://a", "jti-1", expires)
    assert guard.first_use("https://b", "jti-1", expires)  # jti is scoped by issuer


def test_concurrent_claims_have_exactly_one_winner(db: Database) -> None:
    jti = uuid.uuid4().hex
    expires = datetime.now(UTC) + timedelta(minutes=5)
    results: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def claim() -> None:
        start.wait()
        with db.engine.begin() as conn:
            won = claim_token(conn, "https://a", jti, expires)
        with lock:
            results.append(won)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]


def test_expired_rows_are_purged(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    import cds.hooks.replay as replay

    past = datetime.now(UTC) - timedelta(minutes=5)
    with db.engine.begin() as conn:
        claim_token(conn, "https://a", "old", past)
    monkeypatch.setattr(replay, "PURGE_EVERY", 1)  # purge on every call for this test
    with db.engine.begin() as conn:
        claim_token(conn, "https://a", "new", datetime.now(UTC) + timedelta(minutes=5))
    with db.engine.connect() as conn:
        assert conn.execute(sa.select(SeenTokenRecord.jti)).scalars().all() == ["new"]
