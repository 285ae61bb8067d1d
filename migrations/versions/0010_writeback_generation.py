"""analyses.writeback_generation: which write-back of an analysis is the newest.

An analysis is written back to the EHR more than once: after the analysis, again after its
explanation (rationale and heatmaps added), and by retries. Each request for a write-back bumps
this counter; a write-back carries the value it read together with the content it read, and the
report on the FHIR server records it, so an older write-back delivered late never replaces a newer
report (cds.fhir.writeback), and only the newest writer records the write-back state.

Revision ID: 0010
Revises: 0008
Create Date: 2026-11-23 14:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("analyses") as batch_op:
        batch_op.add_column(
            sa.Column("writeback_generation", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("analyses") as batch_op:
        batch_op.drop_column("writeback_generation")
