"""issued_cards: an indexed card uuid -> hook call lookup; analyses.pacs_instances_seen.

issued_cards: the viewer's ``?card=`` link (cds.viewer.feedback.linked_card_uuid) must find the
hook call that returned a card. hook_calls.card_uuids holds them space-separated, so that lookup
was a LIKE '%uuid%' scan of every audit row. This table holds one row per issued card uuid with
its hook call, keyed by the uuid. It is filled by a trigger on INSERT into hook_calls, i.e. by the
database wherever card_uuids is written (the hook hot path's driver-level INSERT included), in the
same statement: no writer can forget it and no second round trip is added to the hook path.
Existing audit rows are backfilled. Caution for later migrations: a batch_alter_table of
hook_calls on SQLite recreates the table, which drops its triggers: such a migration must
re-create the issued_cards trigger (TRIGGER_SQL) AND re-run this migration's backfill (rows
inserted in between, e.g. by a server still running on the old schema, would otherwise never
reach issued_cards).

pacs_instances_seen: the number of instances the PACS held when an analysis was requested (next
to pacs_series_seen from 0007): a study that grows by instances within its series (a series
still arriving when the study first went stable) is re-analysed too.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 09:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TRIGGER = "hook_calls_issued_cards"

# Card uuids are canonical UUID text (hex digits and hyphens, cds.signing.CardIdSigner), so turning
# the space-separated list into a JSON array by string replacement is exact.
SQLITE_SPLIT = "json_each('[\"' || replace(trim({col}), ' ', '\",\"') || '\"]')"

TRIGGER_SQL = {
    "sqlite": (
        f"CREATE TRIGGER {TRIGGER} AFTER INSERT ON hook_calls "
        "WHEN NEW.card_uuids IS NOT NULL AND trim(NEW.card_uuids) <> '' BEGIN "
        "INSERT OR IGNORE INTO issued_cards (card_uuid, hook_call_id) "
        f"SELECT lower(value), NEW.id FROM {SQLITE_SPLIT.format(col='NEW.card_uuids')} "
        "WHERE value <> ''; END",
    ),
    "postgresql": (
        "CREATE FUNCTION hook_calls_issued_cards() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "INSERT INTO issued_cards (card_uuid, hook_call_id) "
        "SELECT DISTINCT lower(u), NEW.id FROM unnest(regexp_split_to_array(trim(NEW.card_uuids), '\\s+')) "
        "AS u WHERE u <> '' ON CONFLICT DO NOTHING; RETURN NULL; END $$",
        f"CREATE TRIGGER {TRIGGER} AFTER INSERT ON hook_calls FOR EACH ROW "
        "WHEN (NEW.card_uuids IS NOT NULL) EXECUTE FUNCTION hook_calls_issued_cards()",
    ),
}

BACKFILL_SQL = {
    "sqlite": (
        "INSERT OR IGNORE INTO issued_cards (card_uuid, hook_call_id) "
        f"SELECT lower(j.value), h.id FROM hook_calls h, {SQLITE_SPLIT.format(col='h.card_uuids')} j "
        "WHERE h.card_uuids IS NOT NULL AND trim(h.card_uuids) <> '' AND j.value <> '' ORDER BY h.id"
    ),
    "postgresql": (
        "INSERT INTO issued_cards (card_uuid, hook_call_id) "
        "SELECT DISTINCT ON (lower(u)) lower(u), h.id FROM hook_calls h, "
        "unnest(regexp_split_to_array(trim(h.card_uuids), '\\s+')) AS u "
        "WHERE h.card_uuids IS NOT NULL AND u <> '' ORDER BY lower(u), h.id ON CONFLICT DO NOTHING"
    ),
}


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect not in TRIGGER_SQL:
        raise NotImplementedError(f"issued_cards trigger: no SQL for {dialect}")
    op.create_table(
        "issued_cards",
        sa.Column("card_uuid", sa.String(length=36), primary_key=True),
        sa.Column(
            "hook_call_id",
            sa.Integer(),
            sa.ForeignKey("hook_calls.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
    )
    op.execute(BACKFILL_SQL[dialect])
    for statement in TRIGGER_SQL[dialect]:
        op.execute(statement)
    with op.batch_alter_table("analyses") as batch_op:
        batch_op.add_column(sa.Column("pacs_instances_seen", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("analyses") as batch_op:
        batch_op.drop_column("pacs_instances_seen")
    op.execute(f"DROP TRIGGER IF EXISTS {TRIGGER}" + (" ON hook_calls" if _pg() else ""))
    if _pg():
        op.execute("DROP FUNCTION IF EXISTS hook_calls_issued_cards()")
    op.drop_table("issued_cards")


def _pg() -> bool:
    return op.get_bind().dialect.name == "postgresql"
