"""seen_tokens: JWT (issuer, jti) replay protection shared by all worker processes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 04:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('seen_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('issuer', sa.String(length=512), nullable=False),
    sa.Column('jti', sa.String(length=255), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_seen_tokens')),
    sa.UniqueConstraint('issuer', 'jti', name=op.f('uq_seen_tokens_issuer_jti'))
    )
    op.create_index(op.f('ix_seen_tokens_expires_at'), 'seen_tokens', ['expires_at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_seen_tokens_expires_at'), table_name='seen_tokens')
    op.drop_table('seen_tokens')
