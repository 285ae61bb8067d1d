"""feedback: unique per (card, outcome) instead of (card, outcome, outcomeTimestamp).

CDS Hooks clients resend feedback, sometimes with a fresh outcomeTimestamp: the same card and
outcome twice must stay one record (the first). Duplicates already stored are removed, keeping
the earliest row of each (card_uuid, outcome).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 04:55:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    feedback = sa.table("feedback", sa.column("id"), sa.column("card_uuid"), sa.column("outcome"))
    first = (
        sa.select(sa.func.min(feedback.c.id))
        .group_by(feedback.c.card_uuid, feedback.c.outcome)
        .scalar_subquery()
    )
    op.execute(sa.delete(feedback).where(feedback.c.id.not_in(first)))
    with op.batch_alter_table("feedback") as batch:
        batch.drop_constraint("uq_feedback_card_uuid_outcome_outcome_timestamp", type_="unique")
        batch.create_unique_constraint("uq_feedback_card_uuid_outcome", ["card_uuid", "outcome"])


def downgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.drop_constraint("uq_feedback_card_uuid_outcome", type_="unique")
        batch.create_unique_constraint(
            "uq_feedback_card_uuid_outcome_outcome_timestamp", ["card_uuid", "outcome", "outcome_timestamp"]
        )
