"""`cds db upgrade` (schema to the newest migration) and `cds db current` (what it is now)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("db", help="database schema (Alembic migrations)")
    actions = parser.add_subparsers(dest="db_action", required=True, metavar="ACTION")
    up = actions.add_parser("upgrade", help="apply migrations up to the newest (idempotent)")
    up.add_argument("--revision", default="head", help="target revision (default: head)")
    up.set_defaults(handler=_upgrade)
    current = actions.add_parser("current", help="print the database's schema revision")
    current.set_defaults(handler=_current)


def _upgrade(args: argparse.Namespace) -> int:
    from cds.config import Settings
    from cds.store.db import normalise_url
    from cds.store.migrate import current_revision, upgrade

    url = Settings.from_env().resolved_database_url
    upgrade(url, args.revision)
    shown = normalise_url(url).render_as_string(hide_password=True)
    print(f"database {shown} at revision {current_revision(url)}")
    return 0


def _current(args: argparse.Namespace) -> int:
    from cds.config import Settings
    from cds.store.migrate import current_revision, head_revision

    current = current_revision(Settings.from_env().resolved_database_url)
    head = head_revision()
    print(f"current: {current or 'none (empty database)'}; newest: {head}")
    return 0 if current == head else 1
