"""analyses: what the PACS study held when its analysis was requested, and the FHIR write-back state.

pacs_series_seen: the number of series in the PACS notification/poll that requested the analysis
(a later notification with more series makes a new revision: the study grew after it went stable).
writeback_state/_attempts/_next_at: a durable write-back that failed (EHR down) is retried later
with long back-off instead of being dropped when its job's attempts are used up.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 08:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("analyses") as batch_op:
        batch_op.add_column(sa.Column("pacs_series_seen", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("writeback_state", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("writeback_attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("writeback_next_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_analyses_writeback_next_at", ["writeback_next_at"])


def downgrade() -> None:
    with op.batch_alter_table("analyses") as batch_op:
        batch_op.drop_index("ix_analyses_writeback_next_at")
        batch_op.drop_column("writeback_next_at")
        batch_op.drop_column("writeback_attempts")
        batch_op.drop_column("writeback_state")
        batch_op.drop_column("pacs_series_seen")
