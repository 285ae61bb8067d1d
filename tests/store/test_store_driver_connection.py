"""Database.driver_connection(): per-thread hot-path connections survive a dropped server
connection and are closed when their thread ends (SQLite and a real PostgreSQL)."""

from __future__ import annotations

import gc
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from cds.hooks.hotstore import HotStore
from cds.store.db import Database


def _terminate(db: Database, pid: int) -> None:
    """Kill a backend from another connection, waiting (up to 5 s) until it is gone."""
    with db.engine.connect() as other:
        assert other.execute(sa.text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid}).scalar()


def _pg_only(db: Database) -> None:
    if db.is_sqlite:
        pytest.skip("only a PostgreSQL server can drop a connection")


def test_connection_dropped_by_the_server_is_replaced_before_use(db: Database) -> None:
    _pg_only(db)
    store = HotStore(db)
    expires = datetime.now(UTC) + timedelta(minutes=5)
    assert store.claim("https://a", "before-kill", expires) is True
    first = db.driver_connection()
    _terminate(db, first.info.backend_pid)
    assert store.claim("https://a", "after-kill", expires) is True  # not a 500
    assert db.driver_connection() is not first
    assert store.claim("https://a", "after-kill", expires) is False  # still exactly one claim
    assert store.analysis_status(["1.2.3"]) == []


def test_idempotent_read_retried_once_when_the_connection_dies_mid_statement(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The liveness check can lose a race with the kill: a read is then retried, a claim is not."""
    _pg_only(db)
    store = HotStore(db)
    monkeypatch.setattr("cds.store.db._postgres_alive", lambda driver: not driver.closed)
    _terminate(db, db.driver_connection().info.backend_pid)
    assert store.analysis_status(["1.2.3"]) == []
    _terminate(db, db.driver_connection().info.backend_pid)
    with pytest.raises(Exception):  # noqa: B017 - psycopg's OperationalError
        store.claim("https://a", "mid-kill", datetime.now(UTC) + timedelta(minutes=5))
    assert store.claim("https://a", "mid-kill", datetime.now(UTC) + timedelta(minutes=5)) is True


def _pg_connections(db: Database) -> int:
    with db.engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
            ).scalar_one()
        )


def test_connections_of_finished_threads_are_closed(db: Database) -> None:
    """`cds serve` (werkzeug, threaded) runs each request on a new thread."""
    if db.url.database in (None, "", ":memory:"):
        pytest.skip("an in-memory database is the engine's own connection")
    opened, closed = [0], [0]
    engine = db._driver_engine()

    @event.listens_for(engine, "connect")
    def _connect(*_: Any) -> None:
        opened[0] += 1

    @event.listens_for(engine, "close")
    def _close(*_: Any) -> None:
        closed[0] += 1

    baseline = None if db.is_sqlite else _pg_connections(db)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            db.driver_connection().execute("SELECT 1").fetchall()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    for _ in range(30):  # 300 threads, 10 alive at a time
        batch = [threading.Thread(target=work) for _ in range(10)]
        for t in batch:
            t.start()
        for t in batch:
            t.join()
    gc.collect()
    assert errors == []
    assert opened[0] == 300
    assert opened[0] - closed[0] == 0
    if baseline is not None:
        assert _pg_connections(db) <= baseline + 1
    db.driver_connection()  # this thread's connection stays open between calls
    assert db.driver_connection() is db.driver_connection()
