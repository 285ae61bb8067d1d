"""docker/: no Docker engine here, so check what can be checked without one: the compose file
parses and is consistent (services, healthchecks, dependencies, settings names), the Dockerfile
copies what exists and runs as non-root, and the gunicorn config reads its environment."""

from __future__ import annotations

import re
import runpy
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


def _compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    data = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def _known_settings() -> set[str]:
    source = (ROOT / "cds" / "config.py").read_text()
    return set(re.findall(r'"(CDS_[A-Z0-9_]+)"', source))


def test_compose_has_the_services_with_healthchecks() -> None:
    services = _compose()["services"]
    assert set(services) == {"web", "worker", "pacs-poller", "redis", "postgres", "orthanc"}
    for name, service in services.items():
        assert "healthcheck" in service and service["healthcheck"]["test"], name


def test_compose_runs_celery_workers_with_probes_and_metrics() -> None:
    services = _compose()["services"]
    assert services["web"]["environment"]["CDS_JOBS_BACKEND"] == "${CDS_JOBS_BACKEND:-celery}"
    assert services["worker"]["command"] == ["worker", "--metrics-port", "9100"]
    assert "127.0.0.1:9100/metrics" in " ".join(services["worker"]["healthcheck"]["test"])
    assert "127.0.0.1:8080/healthz" in " ".join(services["web"]["healthcheck"]["test"])
    assert "ports" not in services["worker"]  # scaled with --scale worker=N: no fixed host port
    assert services["pacs-poller"]["command"][:3] == ["cds", "pacs", "poll"]
    orthanc = services["orthanc"]
    mounts = [v.split(":")[0] for v in orthanc["volumes"]]
    for mount in mounts:
        if mount.startswith("./"):
            assert (DOCKER / mount).is_file(), f"compose mounts missing {mount}"
    assert orthanc["environment"]["CDS_PACS_NOTIFY_URL"] == "http://web:8080/pacs/notifications"


def test_image_prepares_prometheus_multiprocess_mode() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert "PROMETHEUS_MULTIPROC_DIR=/tmp/cds-metrics" in text
    assert "127.0.0.1:8080/healthz" in text
    entry = (DOCKER / "entrypoint.sh").read_text()
    assert 'rm -rf "$PROMETHEUS_MULTIPROC_DIR"' in entry
    conf = runpy.run_path(str(DOCKER / "gunicorn.conf.py"))
    assert callable(conf["child_exit"])


def test_docker_compose_config_validates(tmp_path: Path) -> None:
    """`docker compose config` where the compose plugin exists (not on the build machine)."""
    import os
    import shutil
    import subprocess

    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode:
        pytest.skip("docker compose is not installed here; the structure tests above stand in")
    (DOCKER / "clients.json").exists() or pytest.skip("docker/clients.json absent (compose mounts it)")
    env = {
        **os.environ,
        "CDS_SECRET_KEY": "x" * 32,
        "POSTGRES_PASSWORD": "pw",
        "ORTHANC_PASSWORD": "pw",
        "CDS_PACS_NOTIFY_TOKEN": "t" * 24,
    }
    result = subprocess.run(
        [docker, "compose", "-f", str(DOCKER / "compose.yaml"), "config", "--quiet"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_docker_compose_v1_validates_all_but_the_name(tmp_path: Path) -> None:
    """Where only Debian's docker-compose 1.29 exists (this build machine; .ci installs it): its
    `config` validates the services, healthchecks, dependency conditions, volumes and the
    required-secret interpolation against its schema. The top-level `name` is a Compose v2 key
    that v1 predates, so it validates a copy without that line (the structure tests cover it)."""
    import os
    import shutil
    import subprocess

    compose_v1 = shutil.which("docker-compose")
    if compose_v1 is None:
        pytest.skip("docker-compose (Debian package) is not installed")
    text = (DOCKER / "compose.yaml").read_text()
    assert re.search(r"^name: cds-spine$", text, re.M)
    copy = tmp_path / "compose.yaml"
    copy.write_text(re.sub(r"^name: .*\n", "", text, flags=re.M))
    cmd = [compose_v1, "--project-directory", str(DOCKER), "-f", str(copy), "config"]
    secrets = {
        "CDS_SECRET_KEY": "x" * 32,
        "POSTGRES_PASSWORD": "pw",
        "ORTHANC_PASSWORD": "pw",
        "CDS_PACS_NOTIFY_TOKEN": "t" * 24,
    }
    base = {k: v for k, v in os.environ.items() if k not in secrets}
    ok = subprocess.run(cmd, capture_output=True, text=True, env={**base, **secrets})
    without = {k: v for k, v in secrets.items() if k != "POSTGRES_PASSWORD"}
    missing = subprocess.run(cmd, capture_output=True, text=True, env={**base, **without})
    assert ok.returncode == 0, ok.stderr
    rendered = pytest.importorskip("yaml").safe_load(ok.stdout)
    assert set(rendered["services"]) == {"web", "worker", "pacs-poller", "postgres", "redis", "orthanc"}
    assert missing.returncode != 0 and "set POSTGRES_PASSWORD" in missing.stderr  # no silent default


def test_compose_dependencies_wait_for_healthy_services() -> None:
    services = _compose()["services"]
    for name in ("web", "worker", "pacs-poller"):
        depends = services[name]["depends_on"]
        assert set(depends) == {"postgres", "redis", "orthanc"}
        for dep, rule in depends.items():
            assert rule["condition"] == "service_healthy"
            assert "healthcheck" in services[dep], dep


def test_compose_app_settings_are_real_settings() -> None:
    services = _compose()["services"]
    known = _known_settings()
    for name in ("web", "worker"):
        env = services[name]["environment"]
        assert env["CDS_DATABASE_URL"].startswith("postgresql+psycopg://cds:")
        assert env["CDS_DATABASE_URL"].endswith("@postgres:5432/cds")
        assert env["CDS_DICOMWEB_URL"] == "http://orthanc:8042/dicom-web"
        assert env["CDS_BROKER_URL"].startswith("redis://redis:6379")
        unknown = {k for k in env if k.startswith("CDS_")} - known
        assert not unknown, f"compose sets settings cds.config does not read: {unknown}"
    assert services["web"]["command"] == ["web"] and services["worker"]["command"][0] == "worker"
    assert services["web"]["build"]["dockerfile"] == "docker/Dockerfile"
    assert services["postgres"]["environment"]["POSTGRES_USER"] == "cds"


def test_dockerfile_is_slim_non_root_and_copies_existing_paths() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and not users[-1].startswith(("root", "0"))
    assert "-c constraints.txt" in text and "whl/cpu" in text
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        *sources, _dest = line.split()
        for src in sources:
            assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"
    entry = (DOCKER / "entrypoint.sh").read_text()
    assert "cds db upgrade" in entry and "gunicorn -c /app/docker/gunicorn.conf.py" in entry


def test_gunicorn_config_reads_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDS_WEB_BIND", "127.0.0.1:9000")
    monkeypatch.setenv("CDS_WEB_WORKERS", "3")
    monkeypatch.setenv("CDS_WEB_THREADS", "8")
    conf = runpy.run_path(str(DOCKER / "gunicorn.conf.py"))
    assert conf["bind"] == "127.0.0.1:9000"
    assert (conf["workers"], conf["threads"], conf["worker_class"]) == (3, 8, "gthread")
    assert conf["wsgi_app"] == "cds:create_app()"
    assert conf["accesslog"] is None  # viewer URLs carry tokens: no access log unless asked
    monkeypatch.setenv("CDS_WEB_WORKERS", "lots")
    with pytest.raises(SystemExit, match="CDS_WEB_WORKERS must be an integer"):
        runpy.run_path(str(DOCKER / "gunicorn.conf.py"))


def test_gunicorn_with_the_production_config_serves_discovery(tmp_path: Path) -> None:
    """The real thing: gunicorn + docker/gunicorn.conf.py + create_app(), as the image runs it."""
    import json
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from cds.store.migrate import upgrade

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "CDS_DATA_DIR": str(tmp_path),
        "CDS_WEB_BIND": f"127.0.0.1:{port}",
        "CDS_WEB_WORKERS": "1",
        "CDS_WEB_THREADS": "2",
        "CDS_SECRET_KEY": "test-only-secret-key-0123456789abcdef",
    }
    env.pop("CDS_DATABASE_URL", None)
    upgrade(f"sqlite:///{tmp_path / 'cds.db'}")
    gunicorn = Path(sys.executable).with_name("gunicorn")
    proc = subprocess.Popen(
        [str(gunicorn), "-c", str(DOCKER / "gunicorn.conf.py")],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        body = None
        deadline = time.monotonic() + 60
        while body is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/cds-services", timeout=2) as resp:
                    body = json.loads(resp.read())
            except OSError:
                time.sleep(0.2)
        assert body is not None, "gunicorn did not serve"
        assert {s["hook"] for s in body["services"]} >= {"patient-view", "order-select", "order-sign"}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
