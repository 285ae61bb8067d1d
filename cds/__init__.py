"""Explainable lumbar spine MRI decision support over CDS Hooks.

create_app() owns all wiring: settings -> shared services -> error handlers -> blueprints.
Nothing heavy happens at import or in create_app (no torch, no models, no DICOM): the web process
answers hooks from the store, and analysis runs in jobs (tests/test_app.py checks this).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from cds.config import Settings


def create_app(settings: Settings | None = None) -> Flask:
    """Build the WSGI app. `settings` defaults to Settings.from_env() (CDS_* variables)."""
    from flask import Flask

    from cds import extensions
    from cds.config import Settings
    from cds.store.migrate import ensure_database_dir

    if settings is None:  # the deployed path (gunicorn, `cds serve`): refuse unsafe settings
        settings = Settings.from_env()
        check_deployable(settings)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.config["SECRET_KEY"] = settings.secret_key or None
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep FHIR/CDS member order readable
    _install_web_edge(app)

    ensure_database_dir(settings.resolved_database_url)
    extensions.init_app(app, settings)
    _register_error_handlers(app)
    _register_blueprints(app)
    return app


def check_deployable(settings: Settings) -> None:
    """Settings a served instance must have. Tests and tools pass Settings explicitly and skip this."""
    from cds.config import SettingsError

    if not settings.secret_key and not settings.dev_mode:
        raise SettingsError(
            "CDS_SECRET_KEY is required (it signs the viewer links in cards); "
            "generate one with `python -c 'import secrets; print(secrets.token_hex(32))'`"
        )


def _register_blueprints(app: Flask) -> None:
    from cds.hooks.blueprint import bp as hooks_bp
    from cds.ops.blueprint import bp as ops_bp
    from cds.pacs.blueprint import bp as pacs_bp
    from cds.viewer.blueprint import bp as viewer_bp

    app.register_blueprint(hooks_bp)  # /cds-services
    app.register_blueprint(ops_bp)  # /healthz, /readyz, /metrics
    app.register_blueprint(viewer_bp)  # /viewer/<token>
    app.register_blueprint(pacs_bp)  # /pacs/notifications (off unless CDS_PACS_NOTIFY_TOKEN)


def _install_web_edge(app: Flask) -> None:
    """Request ids (X-Request-ID in, out and in every log line) and cookie sessions that cost
    nothing on requests without a session cookie (every CDS Hooks call)."""
    from cds.logs import init_app as init_request_ids
    from cds.websession import LazyCookieSessionInterface

    app.session_interface = LazyCookieSessionInterface()
    init_request_ids(app)


def _register_error_handlers(app: Flask) -> None:
    from cds.weberrors import register_error_handlers

    register_error_handlers(app)
