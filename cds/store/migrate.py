"""Alembic, driven from code: `cds db upgrade`, `cds serve` and the tests all call upgrade().

The migration scripts live in the top-level migrations/ folder (next to the package in a checkout
and in the Docker image, which installs the project in editable mode for that reason).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL

from cds.store.db import normalise_url

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(url: str | URL) -> Config:
    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise FileNotFoundError(f"Alembic migrations not found at {MIGRATIONS_DIR}")
    config = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Passed as an attribute, not an ini option: ini interpolation would mangle '%' in passwords.
    config.attributes["database_url"] = normalise_url(url)
    return config


def ensure_database_dir(url: str | URL) -> None:
    """Create the folder of a SQLite database file (the embedded default lives under CDS_DATA_DIR)."""
    url = normalise_url(url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)


def upgrade(url: str | URL, revision: str = "head") -> None:
    """Bring the schema at `url` to `revision` (idempotent)."""
    parsed = normalise_url(url)
    ensure_database_dir(parsed)
    command.upgrade(alembic_config(parsed), revision)


def current_revision(url: str | URL) -> str | None:
    from alembic.runtime.migration import MigrationContext

    from cds.store.db import Database

    parsed = normalise_url(url)
    if (
        parsed.get_backend_name() == "sqlite"
        and parsed.database not in (None, "", ":memory:")
        and not Path(parsed.database).exists()
    ):
        return None  # do not create an empty file just to look
    db = Database(parsed)
    try:
        with db.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        db.dispose()


def head_revision() -> str | None:
    """The newest migration in migrations/versions (what upgrade() brings a database to)."""
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(config).get_current_head()
