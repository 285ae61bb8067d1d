"""Alembic environment: the URL comes from cds.store.migrate (attribute) or cds.config.Settings."""

from __future__ import annotations

from alembic import context

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
            with context.begin_transaction():
                context.run_migrations()
    finally:
        db.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
