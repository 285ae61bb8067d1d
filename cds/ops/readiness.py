"""Readiness checks: can this instance do its work right now? (the /readyz answer)

Checked: the database (reachable, schema at the newest migration), the broker (Celery backend
only), the PACS (only when CDS_DICOMWEB_URL is set) and the model files (card readable, weights
present, sha256 equal to the card's). Without torch: cards are JSON and the hash is hashlib; the
hash of a weights file is computed once per (path, size, mtime) and cached, so probing every few
seconds costs a stat per model. Results say what failed in fixed, PHI-free words (no URLs, no
credentials, no exception text from a remote server).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cds.config import Settings
    from cds.store.db import Database

#: The models a quick read needs (cds.pipeline.segment/axial/classify MODEL_NAME). Listed here
#: rather than imported so that readiness never imports the pipeline's modules.
REQUIRED_MODELS: tuple[str, ...] = ("sagittal_seg", "axial_seg", "classifier")
#: A probe must answer quickly; a dependency slower than this is "not ready".
PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    ms: float

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail, "ms": round(self.ms, 1)}


@dataclass(frozen=True)
class Readiness:
    checks: tuple[Check, ...]

    @property
    def ready(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": "ready" if self.ready else "not_ready",
            "checks": {c.name: c.to_json() for c in self.checks},
        }


def _timed(name: str, probe: Callable[[], str]) -> Check:
    """Run `probe` (returns a detail, raises on failure) and time it."""
    start = time.perf_counter()
    try:
        detail = probe()
        ok = True
    except ProbeFailed as exc:
        detail, ok = str(exc), False
    except Exception as exc:  # an unexpected error is a failed check, never a 500
        detail, ok = f"check failed ({type(exc).__name__})", False
    return Check(name=name, ok=ok, detail=detail, ms=(time.perf_counter() - start) * 1000.0)


class ProbeFailed(Exception):
    """A dependency answered, and the answer means "not ready" (the message is shown)."""


@lru_cache(maxsize=1)
def _head_revision() -> str | None:
    from cds.store.migrate import head_revision

    return head_revision()


def check_database(db: Database) -> Check:
    def probe() -> str:
        import sqlalchemy as sa
        from alembic.runtime.migration import MigrationContext

        try:
            with db.read_connection() as conn:
                conn.execute(sa.text("SELECT 1"))
                current = MigrationContext.configure(conn).get_current_revision()
        except sa.exc.SQLAlchemyError as exc:
            raise ProbeFailed(f"database unreachable ({type(exc).__name__})") from exc
        head = _head_revision()
        if current != head:
            raise ProbeFailed(f"schema at {current}, expected {head}: run `cds db upgrade`")
        return f"schema {current}"

    return _timed("database", probe)


def check_broker(settings: Settings) -> Check:
    def probe() -> str:
        url = settings.broker_url
        if url.startswith(("redis://", "rediss://")):
            import redis

            client = redis.Redis.from_url(
                url, socket_timeout=PROBE_TIMEOUT_S, socket_connect_timeout=PROBE_TIMEOUT_S
            )
            try:
                client.ping()
            except redis.RedisError as exc:
                raise ProbeFailed(f"broker unreachable ({type(exc).__name__})") from exc
            finally:
                client.close()
            return "redis ping ok"
        from kombu import Connection

        with Connection(url, connect_timeout=PROBE_TIMEOUT_S) as conn:
            try:
                conn.ensure_connection(max_retries=1)
            except Exception as exc:
                raise ProbeFailed(f"broker unreachable ({type(exc).__name__})") from exc
        return "broker connection ok"

    return _timed("broker", probe)


def check_pacs(settings: Settings) -> Check:
    """QIDO-RS `studies?limit=1` on the configured PACS with its credentials."""

    def probe() -> str:
        import requests

        headers = {"Accept": "application/dicom+json"}
        auth: tuple[str, str] | None = None
        if settings.dicomweb_bearer_token:
            headers["Authorization"] = f"Bearer {settings.dicomweb_bearer_token}"
        elif settings.dicomweb_username:
            auth = (settings.dicomweb_username, settings.dicomweb_password)
        try:
            resp = requests.get(
                f"{settings.dicomweb_url.rstrip('/')}/studies",
                params={"limit": "1"},
                headers=headers,
                auth=auth,
                timeout=PROBE_TIMEOUT_S,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise ProbeFailed(f"PACS unreachable ({type(exc).__name__})") from exc
        if resp.status_code in (401, 403):
            raise ProbeFailed(f"PACS refused the credentials (HTTP {resp.status_code})")
        if resp.status_code not in (200, 204):
            raise ProbeFailed(f"PACS answered HTTP {resp.status_code}")
        return f"QIDO-RS HTTP {resp.status_code}"

    return _timed("pacs", probe)


class _HashCache:
    """sha256 per (path, size, mtime_ns): a weights file is hashed again only when it changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[Path, tuple[int, int, str]] = {}

    def sha256(self, path: Path) -> str:
        from cds.ml.spec import sha256_file

        st = path.stat()
        with self._lock:
            hit = self._known.get(path)
        if hit is not None and hit[:2] == (st.st_size, st.st_mtime_ns):
            return hit[2]
        digest = sha256_file(path)
        with self._lock:
            self._known[path] = (st.st_size, st.st_mtime_ns, digest)
        return digest


_HASHES = _HashCache()


def check_models(names: Iterable[str] = REQUIRED_MODELS, models_dir: Path | None = None) -> Check:
    def probe() -> str:
        from cds.errors import ModelError
        from cds.ml.spec import WEIGHTS_FILE, model_dir, read_card

        tags = []
        for name in names:
            try:
                spec = read_card(name, models_dir)
            except ModelError as exc:
                raise ProbeFailed(f"model {name}: card missing or unreadable") from exc
            weights = model_dir(name, models_dir) / WEIGHTS_FILE
            if not weights.is_file():
                raise ProbeFailed(f"model {name}: weights file missing")
            if _HASHES.sha256(weights) != spec.sha256:
                raise ProbeFailed(f"model {name}: weights do not match the card's sha256")
            tags.append(spec.tag)
        return ", ".join(tags)

    return _timed("models", probe)


def check_all(db: Database, settings: Settings, models_dir: Path | None = None) -> Readiness:
    checks = [check_database(db)]
    if settings.jobs_backend == "celery":
        checks.append(check_broker(settings))
    if settings.dicomweb_url:
        checks.append(check_pacs(settings))
    checks.append(check_models(REQUIRED_MODELS, models_dir))
    return Readiness(tuple(checks))
