"""The `cds` command line: every listed command exists; db upgrade, worker and serve work for real."""

from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa

from cds.cli import COMMANDS, build_parser, main
from cds.store.db import Database
from cds.store.migrate import head_revision


def test_every_listed_command_module_exists_and_registers() -> None:
    for name in COMMANDS:
        module = importlib.import_module(f"cds.commands.{name}")
        assert callable(module.register), name
    parser = build_parser()
    registered = next(a for a in parser._actions if a.dest == "command").choices
    assert registered is not None
    assert set(COMMANDS) <= set(registered)
    assert parser.parse_args(["db", "upgrade"]).handler is not None


def test_db_upgrade_and_current(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CDS_DATABASE_URL", database_url)
    assert main(["db", "current"]) == 1  # empty database: not current
    assert main(["db", "upgrade"]) == 0
    assert main(["db", "upgrade"]) == 0  # idempotent
    assert main(["db", "current"]) == 0
    out = capsys.readouterr().out
    assert f"current: {head_revision()}" in out
    db = Database(database_url)
    try:
        assert "jobs" in sa.inspect(db.engine).get_table_names()
    finally:
        db.dispose()


def test_bad_setting_is_one_line_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CDS_JOB_WORKERS", "many")
    assert main(["worker", "--until-idle"]) == 2
    err = capsys.readouterr().err
    assert "CDS_JOB_WORKERS must be an integer" in err and "Traceback" not in err


def test_worker_until_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CDS_DATA_DIR", str(tmp_path))
    assert main(["db", "upgrade"]) == 0
    assert main(["worker", "--until-idle", "--schema-wait-s", "1"]) == 0
    assert "ran 0 job(s)" in capsys.readouterr().out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_upgrades_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "CDS_DATA_DIR": str(tmp_path / "data"),
        "CDS_JOB_WORKERS": "1",
        "CDS_SECRET_KEY": "k" * 32,
    }
    env.pop("CDS_DATABASE_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cds.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        body = None
        while time.monotonic() < deadline and body is None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/no/such/path", timeout=2)
            except urllib.error.HTTPError as exc:
                body = json.loads(exc.read())
                assert exc.code == 404
            except OSError:
                time.sleep(0.2)
        assert body is not None, "server did not come up"
        assert body["resourceType"] == "OperationOutcome"
        assert (tmp_path / "data" / "cds.db").is_file()  # schema upgraded into the data dir
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert f"serving on http://127.0.0.1:{port}/cds-services" in out


def test_demo_prepares_data_and_its_printed_call_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`cds demo` end to end minus the server loop: a real synthetic study, registered and queued,
    a signing key the service trusts, and a printed curl whose token and body the service accepts."""
    import shlex

    from cds import create_app
    from cds.commands.demo import DemoPaths
    from cds.config import Settings
    from cds.extensions import services
    from cds.hooks.clients import load_clients
    from cds.jobs import JobStatus

    monkeypatch.setenv("CDS_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("CDS_DATABASE_URL", raising=False)
    monkeypatch.delenv("CDS_PUBLIC_BASE_URL", raising=False)
    assert main(["demo", "--prepare-only", "--studies", "1", "--port", "8080"]) == 0
    out = capsys.readouterr().out
    assert "Discovery:      http://127.0.0.1:8080/cds-services" in out
    paths = DemoPaths(tmp_path / "demo")
    assert paths.key.stat().st_mode & 0o077 == 0  # private key readable by its owner only
    assert "cds-demo-ehr" in {c for c in load_clients(paths.clients)}
    curl = next(line for line in out.splitlines() if line.startswith("curl "))
    words = shlex.split(curl)
    url = words[words.index("POST") + 1]
    auth = next(w for w in words if w.startswith("Authorization: Bearer "))
    body_file = Path(next(w for w in words if w.startswith("@"))[1:])

    settings = Settings.from_env().with_overrides(
        clients_file=paths.clients,
        secret_key=paths.secret.read_text().strip(),
        public_base_url="http://127.0.0.1:8080",
    )
    app = create_app(settings)
    try:
        assert services(app).jobs.counts()[JobStatus.QUEUED] == 1  # the study's analysis is queued
        client = app.test_client()
        path = url.removeprefix("http://127.0.0.1:8080")
        headers = {"Authorization": auth.removeprefix("Authorization: "), "Content-Type": "application/json"}
        first = client.post(path, data=body_file.read_bytes(), headers=headers)
        assert first.status_code == 200, first.get_data(as_text=True)
        cards = first.get_json()["cards"]
        assert len(cards) == 1 and "pending" in cards[0]["summary"].lower()
        replay = client.post(path, data=body_file.read_bytes(), headers=headers)
        assert replay.status_code == 401  # the printed token is single use
    finally:
        services(app).close()


def test_serve_refuses_to_start_without_a_secret_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CDS_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("CDS_SECRET_KEY", raising=False)
    monkeypatch.delenv("CDS_DEV_MODE", raising=False)
    assert main(["serve", "--port", "1"]) == 2
    assert "CDS_SECRET_KEY is required" in capsys.readouterr().err
