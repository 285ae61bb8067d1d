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
