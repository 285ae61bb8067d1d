"""Shared fixtures: databases on SQLite and on a real, throwaway PostgreSQL cluster.

`backend` is parametrised over both; `database_url` (an empty database), `db` (a migrated one),
`app_settings`, `app` and `client` follow it, so every test that touches the store runs twice.
The PostgreSQL cluster is started once per test session (initdb + pg_ctl on a spare port in a temp
dir, ~1 s); every test gets its own fresh database in it, dropped afterwards. Migrated databases
are copies of a template migrated once per session (a file copy on SQLite, CREATE DATABASE ...
TEMPLATE on PostgreSQL). PostgreSQL refuses to run as root, so as root the server runs as the
`postgres` system user. Without PostgreSQL installed the postgres cases are skipped locally, but
under CI (CI=true) that is an error: CI must test both backends.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cds.config import Settings
from cds.store.db import Database


@pytest.fixture(autouse=True)
def _isolated_logging() -> Iterator[None]:
    """Give every test the logging set-up it started with.

    Commands run in-process (`cds.cli.main`) call `cds.logs.configure_logging`, which sets the root
    level and installs a handler bound to the stderr pytest captured for that test; left in place,
    later tests lose their INFO records (caplog sees nothing) or log into a closed stream. Restoring
    the root logger and the per-logger levels after each test keeps tests independent of order.
    """
    import logging

    root = logging.getLogger()
    root_state = (root.level, list(root.handlers))
    disabled_below = logging.root.manager.disable
    loggers = {
        name: (lg.level, lg.disabled, lg.propagate, list(lg.handlers))
        for name, lg in logging.Logger.manager.loggerDict.items()
        if isinstance(lg, logging.Logger)
    }
    yield
    for handler in [h for h in root.handlers if h not in root_state[1]]:
        root.removeHandler(handler)
    for handler in root_state[1]:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(root_state[0])
    logging.disable(disabled_below)
    for name, lg in logging.Logger.manager.loggerDict.items():
        if not isinstance(lg, logging.Logger):
            continue
        if name in loggers:
            level, disabled, propagate, handlers = loggers[name]
            lg.setLevel(level)
            lg.disabled = disabled
            lg.propagate = propagate
            lg.handlers[:] = handlers
        else:  # created during the test (e.g. a command quietening "cds.hooks"): back to defaults
            lg.setLevel(logging.NOTSET)
            lg.disabled = False


def _under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _pg_bindir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), reverse=True)
    return candidates[0].parent if candidates else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class PostgresCluster:
    host: str
    port: int
    user: str

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{dbname}"

    def create_database(self, name: str | None = None, template: str | None = None) -> str:
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:16]}"
        clause = f' TEMPLATE "{template}"' if template else ""
        with psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"{clause}')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a test database (FORCE ends connections a test left open). Dropping as we go keeps
        the cluster small: hundreds of leftover copies made the final clean-up take minutes."""
        import psycopg
        from sqlalchemy.engine import make_url

        name = make_url(url).database
        with psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    bindir = _pg_bindir()
    if bindir is None:
        message = "PostgreSQL is not installed (apt-get install postgresql; .ci/setup does it)"
        if _under_ci():
            pytest.fail(f"CI=true but {message}")
        pytest.skip(message)
    as_root = os.geteuid() == 0
    prefix: list[str] = ["runuser", "-u", "postgres", "--"] if as_root else []
    root = Path(tempfile.mkdtemp(prefix="cds-pg-"))
    data, sock, log = root / "data", root / "sock", root / "server.log"
    sock.mkdir()
    if as_root:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    port = _free_port()
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    subprocess.run(
        [*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
         "--no-sync"],
        check=True, capture_output=True, env=env,
    )  # fmt: skip
    options = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    subprocess.run(
        [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start"],
        check=True, capture_output=True, env=env,
    )  # fmt: skip
    try:
        yield PostgresCluster(host="127.0.0.1", port=port, user="postgres")
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True, env=env,
        )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def _migrated_templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Per backend, a database migrated to head once per session, copied for each test (fast)."""
    return {}


def _sqlite_template(templates: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cds.store.migrate import upgrade

    if "sqlite" not in templates:
        path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
        upgrade(f"sqlite:///{path}")
        templates["sqlite"] = str(path)
    return Path(templates["sqlite"])


def _postgres_template(templates: dict[str, str], cluster: PostgresCluster) -> str:
    from cds.store.migrate import upgrade

    if "postgresql" not in templates:
        name = "cds_template"
        url = cluster.create_database(name)
        upgrade(url)
        templates["postgresql"] = name
    return templates["postgresql"]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    """The database backend of this test run; `database_url` and `db` both follow it."""
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database on each backend (schema NOT created: use `db` for a migrated one)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    url = cluster.create_database()
    yield url
    cluster.drop_database(url)


@pytest.fixture
def db(
    backend: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    _migrated_templates: dict[str, str],
) -> Iterator[Database]:
    """A fresh Database at the newest migration (a copy of a once-migrated template)."""
    if backend == "sqlite":
        path = tmp_path / "cds.db"
        shutil.copyfile(_sqlite_template(_migrated_templates, tmp_path_factory), path)
        url = f"sqlite:///{path}"
    else:
        cluster = request.getfixturevalue("postgres_cluster")
        url = cluster.create_database(template=_postgres_template(_migrated_templates, cluster))
    database = Database(url)
    try:
        yield database
    finally:
        database.dispose()
        if backend != "sqlite":
            cluster.drop_database(url)


@pytest.fixture
def app_settings(db: Database, tmp_path: Path) -> Settings:
    """Settings for an app on the `db` database, data under tmp_path (dev mode off)."""
    return Settings(
        data_dir=tmp_path / "data",
        database_url=db.url.render_as_string(hide_password=False),
        secret_key="test-secret-key-not-for-production",
        public_base_url="http://127.0.0.1:8080",
    )


@pytest.fixture
def app(app_settings: Settings) -> Iterator[Flask]:
    """create_app() on a migrated database (SQLite and PostgreSQL)."""
    from cds import create_app
    from cds.extensions import services

    application = create_app(app_settings)
    application.config["TESTING"] = True
    try:
        yield application
    finally:
        services(application).close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
