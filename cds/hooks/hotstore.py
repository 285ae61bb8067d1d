"""The hook hot path's three statements, sent straight to the database driver.

Every hook call claims its token's jti, reads the status columns of the patient's analyses and
writes one audit row. Each is a single statement that is correct on its own, so each runs in
autocommit on this thread's own DBAPI connection (Database.driver_connection()): no pool checkout,
no transaction bookkeeping, no SQLAlchemy compilation or result machinery, which together cost
several times what SQLite or PostgreSQL spend on the statements themselves. Everything else (the
ORM load of a result this worker has not parsed yet, registering studies, jobs, feedback) stays on
SQLAlchemy.

The SQL is written out per dialect and must keep the meaning of the records (cds.store.records)
and of the ORM paths it replaces: claim = cds.hooks.replay.claim_token, status = the select of
cds.hooks.storecatalog, datetimes stored the way cds.store.types.UTCDateTime stores them (SQLite:
naive UTC text "YYYY-MM-DD HH:MM:SS.ffffff", which is what SQLAlchemy writes; PostgreSQL: aware
timestamps). tests/hooks/test_hooks_hotstore.py checks rows written here read back through the ORM
and the other way round, on both backends.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from cds.domain import AnalysisStatus, ExplanationStatus
from cds.hooks.replay import PURGE_EVERY
from cds.store.db import Database
from cds.store.types import utcnow

_STATUS_COLUMNS = (
    "s.study_uid, s.patient_ref, a.id, a.status, a.reason, a.revision, "
    "a.created_at, a.updated_at, a.finished_at, e.status, e.updated_at"
)
_AUDIT_COLUMNS = (
    "hook_instance",
    "service_id",
    "hook",
    "patient_ref",
    "latency_ms",
    "outcome",
    "status_code",
    "card_count",
    "card_uuids",
    "created_at",
)


class StatusRow(NamedTuple):
    """Status columns of one analysis of one study (what a card decision needs, no result)."""

    study_uid: str
    patient_ref: str | None
    id: str
    status: AnalysisStatus
    reason: str | None
    revision: int
    created_at: datetime | None
    updated_at: datetime | None
    finished_at: datetime | None
    #: The analysis's explanation (LEFT JOIN explanations, same statement): None when never requested.
    explanation_status: ExplanationStatus | None = None
    explanation_updated_at: datetime | None = None


@dataclass(frozen=True)
class AuditRow:
    """One hook_calls row (no tokens, no bodies; the patient reference only)."""

    hook_instance: str
    service_id: str
    hook: str
    patient_ref: str | None
    latency_ms: float
    outcome: str
    status_code: int
    card_count: int
    #: Space-separated uuids of the cards returned (the feedback trail).
    card_uuids: str | None = None


@dataclass(frozen=True)
class _Dialect:
    placeholder: str
    claim: str
    purge: str
    audit: str
    status_head: str

    def status_sql(self, n: int) -> str:
        return self.status_head + "(" + ", ".join([self.placeholder] * n) + ")"


def _dialect(placeholder: str) -> _Dialect:
    p = placeholder
    return _Dialect(
        placeholder=p,
        claim=(
            f"INSERT INTO seen_tokens (issuer, jti, expires_at) VALUES ({p}, {p}, {p}) "
            "ON CONFLICT DO NOTHING RETURNING id"
        ),
        purge=f"DELETE FROM seen_tokens WHERE expires_at < {p}",
        audit=(
            f"INSERT INTO hook_calls ({', '.join(_AUDIT_COLUMNS)}) "
            f"VALUES ({', '.join([p] * len(_AUDIT_COLUMNS))})"
        ),
        status_head=(
            f"SELECT {_STATUS_COLUMNS} FROM analyses a JOIN studies s ON a.study_id = s.id "
            "LEFT JOIN explanations e ON e.analysis_id = a.id WHERE s.study_uid IN "
        ),
    )


_SQLITE = _dialect("?")
_POSTGRESQL = _dialect("%s")


def _sqlite_time(value: datetime) -> str:
    """SQLAlchemy's SQLite DATETIME text for an aware datetime, in UTC (always 6 fraction digits)."""
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column; use an aware datetime")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _sqlite_read_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value).replace(tzinfo=UTC)


def _pg_time(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column; use an aware datetime")
    return value


def _pg_read_time(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class HotStore:
    """The hot path's statements for one Database (SQLite or PostgreSQL)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        if db.is_sqlite:
            self._sql, self._time, self._read_time = _SQLITE, _sqlite_time, _sqlite_read_time
        elif db.dialect_name == "postgresql":
            self._sql, self._time, self._read_time = _POSTGRESQL, _pg_time, _pg_read_time  # type: ignore[assignment]
        else:  # pragma: no cover - the store supports SQLite and PostgreSQL only
            raise RuntimeError(f"unsupported database dialect {db.dialect_name}")
        self._status_sql: dict[int, str] = {}
        #: The driver's "connection lost" class (PEP 249 OperationalError).
        self._connection_errors: type[Exception] = db.engine.dialect.loaded_dbapi.OperationalError

    def _execute(self, sql: str, params: Sequence[Any], *, idempotent: bool = False) -> list[Any]:
        """Run one statement to completion (all rows fetched: on SQLite that also ends the
        statement, so its autocommit write is committed and the lock released before we return).

        Database.driver_connection() replaces a connection the server dropped before anything is
        sent. A connection lost during the statement is discarded; only an `idempotent` statement
        (a read, the purge) is then tried once more on a fresh one: a claim INSERT may have
        committed before the connection went, and running it again would call the first use of a
        token a replay.
        """
        try:
            return self._run(sql, params)
        except self._connection_errors:
            if not idempotent:
                raise
        return self._run(sql, params)

    def _run(self, sql: str, params: Sequence[Any]) -> list[Any]:
        conn = self._db.driver_connection()
        try:
            cursor = conn.execute(sql, params)
            rows = cursor.fetchall() if cursor.description is not None else []
            cursor.close()
            return rows
        except Exception:
            self._db.discard_driver_connection()  # a broken connection is not reused
            raise

    def claim(self, issuer: str, jti: str, expires_at: datetime) -> bool:
        """True if (issuer, jti) was not seen before, and records it (cds.hooks.replay's rule);
        expired records are purged on about one call in PURGE_EVERY."""
        with self._db.write_lock.held():
            if random.randrange(PURGE_EVERY) == 0:
                self._execute(self._sql.purge, (self._time(utcnow()),), idempotent=True)
            return bool(self._execute(self._sql.claim, (issuer, jti, self._time(expires_at))))

    def audit(self, row: AuditRow) -> None:
        params = (
            row.hook_instance,
            row.service_id,
            row.hook,
            row.patient_ref,
            row.latency_ms,
            row.outcome,
            row.status_code,
            row.card_count,
            row.card_uuids,
            self._time(utcnow()),
        )
        with self._db.write_lock.held():
            self._execute(self._sql.audit, params)

    def analysis_status(self, study_uids: Sequence[str]) -> list[StatusRow]:
        """Status columns of every analysis of the given studies (any order)."""
        if not study_uids:
            return []
        n = len(study_uids)
        sql = self._status_sql.get(n)
        if sql is None:
            sql = self._status_sql.setdefault(n, self._sql.status_sql(n))
        read = self._read_time
        return [
            StatusRow(
                uid,
                patient,
                aid,
                AnalysisStatus(status),
                reason,
                revision,
                read(c),
                read(u),
                read(f),
                None if xs is None else ExplanationStatus(xs),
                read(xu),
            )
            for uid, patient, aid, status, reason, revision, c, u, f, xs, xu in self._execute(
                sql, list(study_uids), idempotent=True
            )
        ]
