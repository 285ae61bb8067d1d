"""Database.driver_connection(): per-thread hot-path connections survive a dropped server
connection and are closed when their thread ends (SQLite and a real PostgreSQL)."""

from __future__ import annotations

import gc
import select
import threading
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from cds.hooks import hotstore
from cds.hooks.hotstore import HotStore
from cds.store.db import Database

#: How long a killed backend may take to go on a loaded machine (pg_terminate_backend's own 5 s
#: wait ran out under load: the test then failed before testing anything).
_KILL_DEADLINE_S = 60.0


def _terminate(db: Database, driver: Any) -> None:
    """Kill `driver`'s backend from another connection and wait until the kill has really happened.

    Done means both: the server no longer lists the backend (it has sent its FATAL and left), and
    the FATAL/EOF has reached `driver`'s socket (readable). Only then is "the next statement on
    `driver` meets a dead connection" true, whatever the machine's load: the tests below assert
    what the store does in exactly that state.
    """
    pid = driver.info.backend_pid
    deadline = time.monotonic() + _KILL_DEADLINE_S
    with db.engine.connect() as other:
        assert other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
        listed = sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid")
        while other.execute(listed, {"pid": pid}).scalar_one():
            other.rollback()  # pg_stat_activity is a snapshot per transaction: take a new one
            assert time.monotonic() < deadline, (
                f"backend {pid} still listed {_KILL_DEADLINE_S} s after the kill"
            )
            time.sleep(0.01)
    poller = select.poll()
    poller.register(driver.fileno(), select.POLLIN)
    assert poller.poll(max(0, int((deadline - time.monotonic()) * 1000))), "the client never saw the kill"


def _pg_only(db: Database) -> None:
    if db.is_sqlite:
        pytest.skip("only a PostgreSQL server can drop a connection")


def test_connection_dropped_by_the_server_is_replaced_before_use(db: Database) -> None:
    _pg_only(db)
    store = HotStore(db)
    expires = datetime.now(UTC) + timedelta(minutes=5)
    assert store.claim("https://a", "before-kill", expires) is True
    first = db.driver_connection()
    _terminate(db, first)
    assert store.claim("https://a", "after-kill", expires) is True  # not a 500
    assert db.driver_connection() is not first
    assert store.claim("https://a", "after-kill", expires) is False  # still exactly one claim
    assert store.analysis_status(["1.2.3"]) == []


def test_idempotent_read_retried_once_when_the_connection_dies_mid_statement(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The liveness check can lose a race with the kill: a read is then retried, a claim is not.

    Every kill is complete before the next statement (_terminate), and the claim's occasional purge
    (one call in PURGE_EVERY, at random) is decided here: a purge first would meet the dead
    connection itself, be retried (it is idempotent) and leave the claim a fresh connection.
    """
    _pg_only(db)
    store = HotStore(db)
    purge = [False]
    monkeypatch.setattr(hotstore, "random", SimpleNamespace(randrange=lambda n: 0 if purge[0] else n - 1))
    monkeypatch.setattr("cds.store.db._postgres_alive", lambda driver: not driver.closed)
    expires = datetime.now(UTC) + timedelta(minutes=5)
    _terminate(db, db.driver_connection())
    assert store.analysis_status(["1.2.3"]) == []
    _terminate(db, db.driver_connection())
    connection_lost = db.engine.dialect.loaded_dbapi.OperationalError  # psycopg's
    with pytest.raises(connection_lost):  # the claim is not retried: it may have committed
        store.claim("https://a", "mid-kill", expires)
    assert store.claim("https://a", "mid-kill", expires) is True  # it had not: the first claim
    assert store.claim("https://a", "expired", datetime.now(UTC) - timedelta(minutes=5)) is True

    purge[0] = True  # the purge meets the dead connection: retried, then the claim runs once
    _terminate(db, db.driver_connection())
    assert store.claim("https://a", "after-purge", expires) is True
    assert store.claim("https://a", "expired", expires) is True  # the expired record was purged
    assert store.claim("https://a", "mid-kill", expires) is False  # the live one was kept


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
