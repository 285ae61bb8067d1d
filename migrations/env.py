"""Alembic environment: the URL comes from cds.store.migrate (attribute) or cds.config.Settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from cds.config import Settings
from cds.store.db import Database, normalise_url
from cds.store.records import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.attributes.get("database_url")
    if url is None:
        url = normalise_url(Settings.from_env().resolved_database_url)
    return url.render_as_string(hide_password=False)


def run_migrations_offline() -> None:
    url = _url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def _set_sqlite_foreign_keys(connection: Connection, on: bool) -> None:
    # Straight to the driver: through SQLAlchemy the statement would autobegin a transaction
    # (BEGIN IMMEDIATE), and PRAGMA foreign_keys is a no-op inside one.
    driver = connection.connection.driver_connection
    assert driver is not None
    driver.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")


def _check_sqlite_foreign_keys(connection: Connection) -> None:
    """Refuse to commit a migration that left rows pointing at nothing (checks were off)."""
    violations = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if violations:
        tables = sorted({str(row[0]) for row in violations})
        raise RuntimeError(
            f"migration left {len(violations)} foreign key violation(s) in {', '.join(tables)}; rolled back"
        )


def run_migrations_online() -> None:
    db = Database(_url())
    try:
        with db.engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=db.is_sqlite,
                # Database begins SQLite transactions itself (BEGIN IMMEDIATE), so DDL is
                # transactional there too: a failed migration leaves the schema untouched.
                transactional_ddl=True,
                compare_type=True,
            )
            if not db.is_sqlite:
                with context.begin_transaction():
                    context.run_migrations()
                return
            # SQLite: batch_alter_table rebuilds a table (copy, DROP TABLE, rename). With foreign
            # keys on (Database turns them on for every connection), that DROP TABLE runs the
            # ON DELETE CASCADE of every child table: a downgrade dropping a column of analyses
            # would silently delete all findings and explanations. So checks are off while the
            # migrations run (set before BEGIN: the pragma cannot change inside a transaction),
            # verified with foreign_key_check before commit, and restored afterwards.
            _set_sqlite_foreign_keys(connection, on=False)
            try:
                with context.begin_transaction():
                    context.run_migrations()
                    _check_sqlite_foreign_keys(connection)
            finally:
                _set_sqlite_foreign_keys(connection, on=True)
    finally:
        db.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
