"""JWT replay protection in the database, so that every gunicorn worker (and host) shares it.

An (issuer, jti) pair is inserted under a unique constraint with ON CONFLICT DO NOTHING RETURNING: a
returned row means first use, none means a replay (SQLite and PostgreSQL alike, no savepoint, no
exception path). Rows are kept until the token (plus leeway) expires and are then deleted by
later calls, on about one call in PURGE_EVERY.
"""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from cds.store.records import SeenTokenRecord
from cds.store.types import utcnow

PURGE_EVERY = 200

# Built once: statement construction costs more than the insert itself on the hot path.
_CLAIM: dict[str, Any] = {
    "postgresql": postgresql.insert(SeenTokenRecord).on_conflict_do_nothing().returning(SeenTokenRecord.id),
    "sqlite": sqlite.insert(SeenTokenRecord).on_conflict_do_nothing().returning(SeenTokenRecord.id),
}
_PURGE = sa.delete(SeenTokenRecord).where(SeenTokenRecord.expires_at < sa.bindparam("now"))


def claim_token(conn: sa.Connection, issuer: str, jti: str, expires_at: datetime) -> bool:
    """True if (issuer, jti) was not seen before; records it. Runs in the caller's transaction
    (a Core connection, or an ORM session's `session.connection()`)."""
    if random.randrange(PURGE_EVERY) == 0:
        conn.execute(_PURGE, {"now": utcnow()})
    stmt = _CLAIM.get(conn.dialect.name)
    if stmt is None:  # pragma: no cover - the store supports SQLite and PostgreSQL only
        raise RuntimeError(f"unsupported database dialect {conn.dialect.name}")
    # RETURNING, not rowcount: drivers disagree on rowcount for ON CONFLICT (psycopg reports -1).
    row = conn.execute(stmt, {"issuer": issuer, "jti": jti, "expires_at": expires_at}).first()
    return row is not None
