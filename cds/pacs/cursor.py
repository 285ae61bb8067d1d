"""The persisted read position of a PACS change feed (table pacs_cursors, one row per feed)."""

from __future__ import annotations

import sqlalchemy as sa

from cds.store.db import Database
from cds.store.queries import insert_or_get
from cds.store.records import PacsCursorRecord
from cds.store.types import utcnow


def load_cursor(db: Database, name: str) -> int | None:
    """The last handled change Seq of feed `name`, or None when the feed was never read."""
    with db.session(readonly=True) as s:
        record = s.get(PacsCursorRecord, name)
        return None if record is None else int(record.last_change)


def save_cursor(db: Database, name: str, last_change: int) -> None:
    """Move the cursor forward (never back: two pollers racing cannot un-read changes)."""
    with db.session() as s:
        insert_or_get(
            s,
            PacsCursorRecord(name=name, last_change=last_change, updated_at=utcnow()),
            lambda: s.get(PacsCursorRecord, name),
        )
        s.execute(
            sa.update(PacsCursorRecord)
            .where(PacsCursorRecord.name == name, PacsCursorRecord.last_change < last_change)
            .values(last_change=last_change, updated_at=utcnow())
        )


def reset_cursor(db: Database, name: str, last_change: int = 0) -> None:
    """Move the cursor to `last_change` unconditionally (also back).

    Only for a PACS whose change log restarted (its database was recreated, so its Seq numbers
    start again below the cursor): re-reading from there can only repeat work, and intake is
    idempotent, while keeping the old cursor would skip every new study.
    """
    with db.session() as s:
        insert_or_get(
            s,
            PacsCursorRecord(name=name, last_change=last_change, updated_at=utcnow()),
            lambda: s.get(PacsCursorRecord, name),
        )
        s.execute(
            sa.update(PacsCursorRecord)
            .where(PacsCursorRecord.name == name)
            .values(last_change=last_change, updated_at=utcnow())
        )
