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


def claim_token(conn: sa.Connection, issuer: str, jti: str, expires_at: datetime) -> bool:
    """True if (issuer, jti) was not seen before; records it. Runs in the caller's transaction
    (a Core connection, or an ORM session's `session.connection()`)."""
    if random.randrange(PURGE_EVERY) == 0:
        conn.execute(sa.delete(SeenTokenRecord).where(SeenTokenRecord.expires_at < utcnow()))
    dialect = conn.dialect.name
    values = {"issuer": issuer, "jti": jti, "expires_at": expires_at}
    if dialect == "postgresql":
        stmt: Any = postgresql.insert(SeenTokenRecord).values(values).on_conflict_do_nothing()
    elif dialect == "sqlite":
        stmt = sqlite.insert(SeenTokenRecord).values(values).on_conflict_do_nothing()
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported by the store
        raise RuntimeError(f"unsupported database dialect {dialect}")
    # RETURNING, not rowcount: drivers disagree on rowcount for ON CONFLICT (psycopg reports -1).
    return conn.execute(stmt.returning(SeenTokenRecord.id)).first() is not None
