"""pacs_cursors: the persisted read position of the PACS change feed (cds.pacs.poller).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 06:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('pacs_cursors',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('last_change', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_pacs_cursors'))
    )


def downgrade() -> None:
    op.drop_table('pacs_cursors')
