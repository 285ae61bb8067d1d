"""viewer_feedback: clinicians' agree/disagree (reason, comment) per finding or per card, from the viewer.

Rows are only added; card_uuid joins a row to the CDS Hooks feedback of the card it came from.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 06:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('viewer_feedback',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('analysis_id', sa.String(length=36), nullable=False),
    sa.Column('target', sa.String(length=64), nullable=False),
    sa.Column('level', sa.String(length=32), nullable=True),
    sa.Column('condition', sa.String(length=32), nullable=True),
    sa.Column('verdict', sa.String(length=32), nullable=False),
    sa.Column('reason', sa.String(length=64), nullable=True),
    sa.Column('comment', sa.Text(), nullable=True),
    sa.Column('card_uuid', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['analysis_id'], ['analyses.id'], name=op.f('fk_viewer_feedback_analysis_id_analyses'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_viewer_feedback'))
    )
    with op.batch_alter_table('viewer_feedback', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_viewer_feedback_analysis_id'), ['analysis_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_viewer_feedback_card_uuid'), ['card_uuid'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('viewer_feedback', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_viewer_feedback_card_uuid'))
        batch_op.drop_index(batch_op.f('ix_viewer_feedback_analysis_id'))
    op.drop_table('viewer_feedback')
