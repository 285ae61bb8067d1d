"""The Alembic migrations build exactly the schema the records describe, on both backends."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from cds.store.db import Database
from cds.store.migrate import current_revision, head_revision, upgrade
from cds.store.records import Base

EXPECTED_TABLES = {
    "studies", "series", "analyses", "findings", "explanations", "hook_calls", "feedback", "jobs",
    "seen_tokens",
}  # fmt: skip


def test_upgrade_creates_all_tables_and_is_idempotent(database_url: str) -> None:
    upgrade(database_url)
    upgrade(database_url)  # second run: nothing to do, no error
    db = Database(database_url)
    try:
        tables = set(sa.inspect(db.engine).get_table_names())
    finally:
        db.dispose()
    assert tables >= EXPECTED_TABLES
    assert "alembic_version" in tables
    assert current_revision(database_url) == head_revision() is not None


def test_migrations_match_records(database_url: str) -> None:
    upgrade(database_url)
    db = Database(database_url)
    try:
        with db.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
    finally:
        db.dispose()
    assert diff == [], f"records and migrations differ; write a migration: {diff}"


def test_postgres_urls_use_the_psycopg3_driver() -> None:
    from cds.store.db import normalise_url

    for raw in ("postgres://u:p@h/db", "postgresql://u:p@h/db", "postgresql+psycopg://u:p@h/db"):
        assert normalise_url(raw).drivername == "postgresql+psycopg"
    assert normalise_url("sqlite:////tmp/x.db").drivername == "sqlite"


def test_feedback_migration_keeps_the_first_of_duplicate_card_outcomes(database_url: str) -> None:
    """0003 narrows the feedback key to (card, outcome): rows stored under the old key collapse."""
    upgrade(database_url, "0002")
    db = Database(database_url)
    try:
        with db.engine.begin() as conn:
            for i, (outcome, ts) in enumerate(
                [("overridden", "2026-11-23 10:00:00"), ("overridden", "2026-11-23 10:00:05"),
                 ("accepted", "2026-11-23 10:01:00")]
            ):  # fmt: skip
                conn.execute(
                    sa.text(
                        "INSERT INTO feedback (id, card_uuid, service_id, outcome, accepted_suggestions,"
                        " outcome_timestamp, created_at) VALUES (:id, 'card-1', 's', :o, '[]', :ts, :ts)"
                    ),
                    {"id": i + 1, "o": outcome, "ts": ts},
                )
        upgrade(database_url)
        with db.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, outcome FROM feedback ORDER BY id")).all()
    finally:
        db.dispose()
    assert [tuple(r) for r in rows] == [(1, "overridden"), (3, "accepted")]


def test_downgrade_and_upgrade_keep_child_rows(database_url: str) -> None:
    """On SQLite a batch_alter_table of analyses rebuilds it with DROP TABLE; with foreign keys on
    that cascaded into findings and explanations (0008's downgrade deleted them all)."""
    import sys
    from pathlib import Path

    from alembic import command

    hooks_tests = str(Path(__file__).resolve().parents[1] / "hooks")
    if hooks_tests not in sys.path:
        sys.path.append(hooks_tests)
    from hooks_support import STUDY_UID, analysis

    from cds.domain import ExplanationStatus
    from cds.store import queries
    from cds.store.migrate import alembic_config

    upgrade(database_url)
    db = Database(database_url)
    tables = ("analyses", "findings", "explanations")

    def counts() -> dict[str, int]:
        with db.engine.connect() as conn:
            return {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one() for t in tables}

    try:
        with db.session() as s:
            queries.upsert_study(s, STUDY_UID, patient_ref="Patient/1", source_uri="/x")
            analysis_id = queries.save_analysis(s, STUDY_UID, analysis()).id
        with db.session() as s:
            queries.save_explanation(
                s, analysis_id, status=ExplanationStatus.COMPLETE, rationale="x", writer="template"
            )
        before = counts()
        assert before["findings"] > 0 and before["explanations"] == 1
        command.downgrade(alembic_config(database_url), "0007")
        assert counts() == before
        upgrade(database_url)
        assert counts() == before
        if db.is_sqlite:  # the migration restored the connection's foreign key enforcement
            with db.engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
    finally:
        db.dispose()
