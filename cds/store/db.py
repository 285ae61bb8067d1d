"""Database: one engine per process, sessions as transactions.

SQLite (the embedded default) gets three things it needs to be correct with several threads:
WAL (readers do not block the writer), a busy timeout (writers wait instead of failing), and
BEGIN IMMEDIATE for write sessions (a transaction takes the write lock when it starts, so two
read-then-write transactions cannot deadlock on lock upgrade, and savepoints work). Read-only
sessions use a plain deferred BEGIN so hook reads never queue behind writers, and refuse writes
(query_only on SQLite, READ ONLY transactions on PostgreSQL). Write sessions on a SQLite file also
queue on a file lock shared by every process (cds.store.writelock), so that a waiting writer is
woken when the lock is free instead of sleeping in SQLite's busy-handler steps; independent_writes()
does not take it (it holds SQLite's lock only inside each statement, and stays on the busy handler).
PostgreSQL needs none of this; URLs are normalised to the psycopg 3 driver.
"""

from __future__ import annotations

import contextlib
import select
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from cds.store.writelock import WriteLock

SQLITE_BUSY_TIMEOUT_S = 30.0


def normalise_url(url: str | URL) -> URL:
    """postgres:// and postgresql:// -> postgresql+psycopg:// (the driver this project ships)."""
    parsed = make_url(url)
    if parsed.drivername in {"postgres", "postgresql"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _sqlite_engine(url: URL, begin: str | None, *, query_only: bool = False, **kw: Any) -> Engine:
    """`begin`: the statement that opens every transaction; None = autocommit (each statement
    commits on its own; SQLAlchemy's begin/commit are then no-ops at the driver)."""
    engine = sa.create_engine(
        url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S}, **kw
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin (pysqlite's implicit
        # BEGIN breaks savepoints and cannot do BEGIN IMMEDIATE).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        if url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode=WAL")
            # WAL + synchronous=NORMAL: no fsync per commit (only at checkpoints); the database
            # cannot corrupt, a power cut may lose the last commits. Per-commit fsync (~10 ms
            # here) would otherwise cap every writer (each hook call writes audit + jti) at ~100/s.
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        if query_only:
            cursor.execute("PRAGMA query_only=ON")
        cursor.close()

    if begin is None:
        return engine

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # Straight to the driver: a bare BEGIN needs none of SQLAlchemy's statement machinery
        # (events, cursor result), which costs more than the statement itself on the hook hot path.
        conn.connection.driver_connection.execute(begin)  # type: ignore[union-attr]

    return engine


def _release(fairy: Any) -> None:
    """Close a driver connection for good (invalidate: no rollback on a possibly dead socket)."""
    with contextlib.suppress(Exception):  # closing a dead connection must not raise anywhere
        fairy.invalidate()


def _postgres_alive(driver: Any) -> bool:
    """False when a psycopg connection is known closed/broken, or its socket is readable.

    An idle autocommit connection has nothing to read: a readable socket means the server sent
    something unasked, in practice the FATAL of pg_terminate_backend, a restart or an idle kill,
    then EOF. psycopg only notices that on the next statement, which would then fail (a 500);
    poll(0) is one system call, no round trip (pool_pre_ping's SELECT would double the hot path).
    """
    if driver.closed or driver.broken:
        return False
    try:
        poller = select.poll()
        poller.register(driver.fileno(), select.POLLIN)
        return not poller.poll(0)
    except (OSError, ValueError):
        return False


class _ThreadConnection:
    """One thread's driver connection. It lives in a threading.local, whose slot Python drops
    when the thread ends: the finalizer then closes the connection (`cds serve` runs each request
    on a new thread; without this every finished thread kept a PostgreSQL connection open)."""

    __slots__ = ("__weakref__", "fairy", "finalizer")

    def __init__(self, fairy: Any, close: bool) -> None:
        self.fairy = fairy
        self.finalizer = weakref.finalize(self, _release, fairy) if close else None


class Database:
    """Engine + session factory for one database URL."""

    def __init__(self, url: str | URL, *, echo: bool = False) -> None:
        self.url = normalise_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            self.engine = _sqlite_engine(self.url, "BEGIN IMMEDIATE", echo=echo)
            in_memory = self.url.database in (None, "", ":memory:")
            # An in-memory database exists per connection pool: readers must share the writer's.
            self._read_engine = (
                self.engine if in_memory else _sqlite_engine(self.url, "BEGIN", query_only=True, echo=echo)
            )
            self._autocommit_engine = self.engine if in_memory else _sqlite_engine(self.url, None, echo=echo)
        else:
            self.engine = sa.create_engine(self.url, echo=echo, pool_pre_ping=True)
            # Same pool; psycopg begins these transactions READ ONLY (no extra round trip).
            self._read_engine = self.engine.execution_options(postgresql_readonly=True)
            self._autocommit_engine = self.engine
        on_file = self.is_sqlite and self.url.database not in (None, "", ":memory:")
        #: Queues this and other processes' writers (SQLite files only; see cds.store.writelock).
        self.write_lock = WriteLock(Path(str(self.url.database)) if on_file else None)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(self._read_engine, expire_on_commit=False)
        self._thread_engine: Engine | None = None
        self._thread_local = threading.local()
        self._thread_lock = threading.Lock()

    @contextmanager
    def session(self, *, readonly: bool = False) -> Iterator[Session]:
        """A transaction: commit on success, rollback on any exception (re-raised).

        Records stay usable after the block (expire_on_commit=False); lazy relationships are not,
        so load what you need inside the block.
        """
        factory = self._read_sessions if readonly else self._sessions
        queue = contextlib.nullcontext() if readonly else self.write_lock.held()
        with queue, factory() as session:
            try:
                yield session
                if not readonly:
                    session.commit()
                # readonly: closing the session ends the transaction without expiring the records
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def read_connection(self) -> Iterator[sa.Connection]:
        """A read-only transaction on a Core connection (no ORM Session), for hot read paths.

        Same engine and guarantees as session(readonly=True); closing it ends the transaction.
        Wrap it in `Session(bind=conn)` where ORM loading is needed.
        """
        with self._read_engine.connect() as conn:
            yield conn

    @contextmanager
    def independent_writes(self) -> Iterator[sa.Connection]:
        """A connection for writes that are each correct on their own (no atomicity between them).

        On a SQLite file each statement commits by itself, so the database write lock is held
        only inside the driver call. In a transaction it would also be held across the Python
        code between statements, where the GIL can hand the CPU to another thread for
        milliseconds while every other process queues on the lock (and SQLite's busy handler
        sleeps in steps of up to 100 ms). Elsewhere (PostgreSQL: row locks, one WAL flush per
        commit; in-memory SQLite) the statements share one transaction, committed at the end.
        """
        if self._autocommit_engine is self.engine:
            with self.engine.begin() as conn:
                yield conn
        else:
            with self._autocommit_engine.connect() as conn:
                yield conn

    @property
    def dialect_name(self) -> str:
        return self.engine.dialect.name

    def driver_connection(self) -> Any:
        """This thread's own DBAPI connection in autocommit mode, kept open between calls.

        For hot paths made of single statements that are each correct on their own (the hooks'
        jti claim, audit row and status read): no pool checkout and none of SQLAlchemy's statement
        machinery, which together cost more than the statements themselves. The connection is set
        up like the engines' (SQLite: WAL, synchronous=NORMAL, busy timeout, foreign keys); an
        in-memory SQLite database is the engine's own connection (it exists only there). After a
        driver error call discard_driver_connection(): the next call connects afresh.

        On PostgreSQL a connection the server dropped (restart, failover, idle kill) is noticed
        here, before a statement is sent, and replaced. The connection is closed when its thread
        ends, so open connections are bounded by live threads that used one.
        """
        found: _ThreadConnection | None = getattr(self._thread_local, "conn", None)
        if found is not None:
            driver: Any = found.fairy.driver_connection
            if self.is_sqlite or _postgres_alive(driver):
                return driver
            self.discard_driver_connection()
        engine = self._driver_engine()
        fairy = engine.raw_connection()
        driver = fairy.driver_connection
        if not self.is_sqlite:
            driver.autocommit = True
        self._thread_local.conn = _ThreadConnection(fairy, close=engine is not self.engine)
        return driver

    def discard_driver_connection(self) -> None:
        """Forget (and close) this thread's driver connection, e.g. after a connection error."""
        found: _ThreadConnection | None = getattr(self._thread_local, "conn", None)
        self._thread_local.conn = None
        if found is not None and found.finalizer is not None:
            found.finalizer()

    def _driver_engine(self) -> Engine:
        """The engine that opens driver connections: NullPool, so that closing one really closes
        it (the thread-local slot is the only "pool"); in-memory SQLite: the main engine."""
        with self._thread_lock:
            if self._thread_engine is None:
                if self._autocommit_engine is self.engine and self.is_sqlite:  # in-memory
                    self._thread_engine = self.engine
                elif self.is_sqlite:
                    self._thread_engine = _sqlite_engine(self.url, None, poolclass=NullPool)
                else:
                    self._thread_engine = sa.create_engine(self.url, poolclass=NullPool)
            return self._thread_engine

    def dispose(self) -> None:
        self.engine.dispose()
        for other in {self._read_engine, self._autocommit_engine, self._thread_engine} - {self.engine, None}:
            assert other is not None
            other.dispose()

    def __repr__(self) -> str:
        return f"Database({self.url.render_as_string(hide_password=True)!r})"
