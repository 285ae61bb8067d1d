"""JWT replay protection in the database, so that every gunicorn worker (and host) shares it.

An (issuer, jti) pair is inserted under a unique constraint: the insert that wins is the first
use; a unique violation is a replay. Rows are kept until the token (plus leeway) expires and are
then deleted, in small batches, by later calls.
"""

from __future__ import annotations

import random
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cds.store.records import SeenTokenRecord
from cds.store.types import utcnow

#: Expired rows are purged on about one call in this many (cheap, bounded, no extra thread).
PURGE_EVERY = 200


def claim_token(session: Session, issuer: str, jti: str, expires_at: datetime) -> bool:
    """True if (issuer, jti) was not seen before; records it. Runs in the caller's transaction."""
    if random.randrange(PURGE_EVERY) == 0:
        session.execute(sa.delete(SeenTokenRecord).where(SeenTokenRecord.expires_at < utcnow()))
    try:
        with session.begin_nested():
            session.add(SeenTokenRecord(issuer=issuer, jti=jti, expires_at=expires_at))
            session.flush()
    except IntegrityError:
        return False
    return True
