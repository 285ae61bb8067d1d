"""Per-process objects of the hooks, built once per app: authenticator, key cache, presenter,
the hot path's statements, and the app's shared services (settings, database, job queue).

Built lazily on the first hook request (not at import, not in create_app's hot path), from the
app's Settings; the clients file is read then, and an invalid one fails loudly.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime

from flask import Flask

from cds.config import Settings
from cds.hooks.auth import Authenticator
from cds.hooks.clients import load_clients
from cds.hooks.hotstore import HotStore
from cds.hooks.jwks import JwksCache
from cds.hooks.presenter import LinkPresenter
from cds.hooks.replay import claim_token
from cds.hooks.storecatalog import ResultCache
from cds.jobs.queue import JobQueue
from cds.signing import CardIdSigner, LinkPurpose, LinkSigner
from cds.store.db import Database

_EXTENSION_KEY = "cds.hooks"
_lock = threading.Lock()


class DatabaseReplayGuard:
    """ReplayGuard over the seen_tokens table, each check its own short write transaction.

    The blueprint instead claims the jti inside the request's final write transaction (together
    with the audit record: one write per call); this class serves callers without one.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def first_use(self, issuer: str, jti: str, expires_at: datetime) -> bool:
        with self._db.engine.begin() as conn:
            return claim_token(conn, issuer, jti, expires_at)


@dataclass
class HooksRuntime:
    settings: Settings
    authenticator: Authenticator
    presenter: LinkPresenter
    results: ResultCache
    db: Database
    jobs: JobQueue
    store: HotStore
    card_ids: CardIdSigner


def build_runtime(settings: Settings, db: Database, jobs: JobQueue) -> HooksRuntime:
    authenticator = Authenticator(
        clients=load_clients(settings.clients_file),
        jwks_cache=JwksCache(timeout_s=min(settings.fhir_timeout_s, 3.0)),
        leeway_s=settings.jwt_leeway_s,
    )
    presenter = LinkPresenter(
        settings.public_base_url,
        LinkSigner(settings.secret_key, LinkPurpose.VIEWER).sign,
        LinkSigner(settings.secret_key, LinkPurpose.EXPLAIN).sign,
        settings.viewer_link_ttl_s,
    )
    return HooksRuntime(
        settings,
        authenticator,
        presenter,
        ResultCache(),
        db,
        jobs,
        HotStore(db),
        CardIdSigner(settings.secret_key),
    )


def runtime(app: Flask) -> HooksRuntime:
    found: HooksRuntime | None = app.extensions.get(_EXTENSION_KEY)
    if found is None:
        from cds.extensions import services  # app wiring (platform); imported lazily, no cycle

        with _lock:
            found = app.extensions.get(_EXTENSION_KEY)
            if found is None:
                svc = services(app)
                found = build_runtime(svc.settings, svc.db, svc.jobs)
                app.extensions[_EXTENSION_KEY] = found
    return found
