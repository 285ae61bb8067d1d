"""hook_calls.card_uuids: the uuids of the cards each hook call returned (feedback trail).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('hook_calls') as batch_op:
        batch_op.add_column(sa.Column('card_uuids', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('hook_calls') as batch_op:
        batch_op.drop_column('card_uuids')
