"""`cds serve` serves at most CDS_SERVE_MAX_THREADS connections at once, so its PostgreSQL driver
connections (one per live request thread, cds.store.db) are bounded too; idle keep-alive
connections do not hold a slot. Real sockets, real PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from flask import Flask

from cds.commands import serve
from cds.config import Settings, SettingsError
from cds.store.db import Database


@contextmanager
def running(app: Any, max_threads: int) -> Iterator[str]:
    server = serve.make_bounded_server("127.0.0.1", 0, app, max_threads)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        server.server_close()


class Concurrency:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0

    @contextmanager
    def inside(self) -> Iterator[None]:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            yield
        finally:
            with self.lock:
                self.now -= 1


def get_many(url: str, n: int) -> list[int]:
    def one(_: int) -> int:
        return requests.get(url, headers={"Connection": "close"}, timeout=60).status_code

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n)))


def test_no_more_requests_run_at_once_than_the_cap() -> None:
    seen = Concurrency()
    app = Flask(__name__)

    @app.get("/slow")
    def slow() -> str:
        with seen.inside():
            time.sleep(0.2)
        return "ok"

    with running(app, max_threads=3) as base:
        assert get_many(f"{base}/slow", 12) == [200] * 12  # the rest waited, none was refused
    assert seen.peak == 3


def test_an_idle_keep_alive_connection_gives_its_slot_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serve, "KEEPALIVE_IDLE_S", 0.3)
    app = Flask(__name__)
    app.get("/")(lambda: "ok")
    with running(app, max_threads=1) as base, requests.Session() as idle:
        assert idle.get(base, timeout=5).status_code == 200  # HTTP/1.1: the connection stays open
        time.sleep(0.8)
        assert requests.get(base, headers={"Connection": "close"}, timeout=5).status_code == 200


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgresql"])
def test_postgresql_driver_connections_stay_within_the_cap(backend: str, db: Database) -> None:
    """Each request uses the hook hot path's per-thread driver connection (cds.store.db)."""
    app = Flask(__name__)

    @app.get("/db")
    def query() -> str:
        db.driver_connection().execute("SELECT pg_sleep(0.15)").fetchall()
        return "ok"

    dbname = db.url.database
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        with db.engine.connect() as conn:
            while not stop.is_set():
                n = conn.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()"
                    ),
                    {"d": dbname},
                ).scalar_one()
                peak = max(peak, int(n))
                time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with running(app, max_threads=4) as base:
            assert get_many(f"{base}/db", 24) == [200] * 24
    finally:
        stop.set()
        watcher.join(5)
    assert 1 <= peak <= 4


def test_the_cap_is_a_setting() -> None:
    assert Settings().serve_max_threads == 32
    assert Settings.from_env({"CDS_SERVE_MAX_THREADS": "8"}).serve_max_threads == 8
    with pytest.raises(SettingsError):
        Settings.from_env({"CDS_SERVE_MAX_THREADS": "0"})


def _post_and_stall(base: str, path: str, declared: int, sent: bytes) -> bytes:
    """A POST whose client sends part of the body and then pauses (connection left open)."""
    import socket

    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\n\r\n"
        )
        sock.sendall(head.encode() + sent)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def test_a_client_stalling_mid_body_gets_408_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The idle timeout also bounds reading a body: a client pausing longer gets a 408
    OperationOutcome (not a 500 from an unhandled TimeoutError) and the connection is closed."""
    import json
    import logging

    from flask import request

    from cds.weberrors import register_error_handlers

    monkeypatch.setattr(serve, "KEEPALIVE_IDLE_S", 0.3)
    app = Flask(__name__)
    register_error_handlers(app)

    @app.post("/echo")
    def echo() -> str:
        return str(len(request.get_data()))

    caplog.set_level(logging.INFO)
    with running(app, max_threads=2) as base:
        reply = _post_and_stall(base, "/echo", 100, b'{"a": "')
        assert requests.post(f"{base}/echo", data=b"{}", timeout=5).text == "2"  # slot given back
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), reply
    outcome = json.loads(body)
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "timeout"
    assert "Traceback" not in caplog.text and "Error on request" not in caplog.text
