"""Process-wide shared objects of the app (Services), built once by create_app.

Why one object in app.extensions rather than module globals: tests build many apps side by side
(SQLite and PostgreSQL), and gunicorn workers each build their own; nothing leaks between them.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from cds.config import Settings
from cds.jobs.celery_dispatch import attach_backend
from cds.jobs.queue import JobQueue
from cds.store.db import Database

EXTENSION_KEY = "cds"


@dataclass(frozen=True)
class Services:
    settings: Settings
    db: Database
    jobs: JobQueue

    @classmethod
    def build(cls, settings: Settings) -> Services:
        db = Database(settings.resolved_database_url)
        return cls(settings=settings, db=db, jobs=attach_backend(JobQueue(db), settings))

    def close(self) -> None:
        self.db.dispose()


def init_app(app: Flask, settings: Settings) -> Services:
    built = Services.build(settings)
    app.extensions[EXTENSION_KEY] = built
    return built


def services(app: Flask | None = None) -> Services:
    """The Services of `app` (default: the current app)."""
    target = app if app is not None else current_app
    found = target.extensions.get(EXTENSION_KEY)
    if not isinstance(found, Services):
        raise RuntimeError("cds services are not initialised: build the app with cds.create_app()")
    return found
