"""Which backend writes drafts, from settings: auto | local | openai | template.

auto uses the local model when its pinned package is installed (or CDS_RATIONALE_MODEL_FILE is
set), otherwise the template alone. Backends are built lazily and cached per process, so the local
model loads at most once per worker and never in the web process (which never asks for one).
"""

from __future__ import annotations

import threading

from cds.config import Settings
from cds.explain.backends.base import BackendError, RationaleBackend

_lock = threading.Lock()
_cache: dict[tuple[object, ...], RationaleBackend] = {}


def backend_for(settings: Settings) -> RationaleBackend | None:
    """The configured backend, or None when the template is to be used alone.

    Raises BackendError when a model backend is configured but cannot be built.
    """
    mode = settings.rationale_backend
    if mode == "template":
        return None
    if mode == "openai":
        key: tuple[object, ...] = ("openai", settings.rationale_url, settings.rationale_model)
        with _lock:
            if key not in _cache:
                from cds.explain.backends.openai import OpenAIBackend

                _cache[key] = OpenAIBackend(
                    settings.rationale_url,
                    settings.rationale_model,
                    settings.rationale_api_key,
                    settings.rationale_timeout_s,
                )
            return _cache[key]
    from cds.explain.backends import local

    if mode == "auto" and not local.is_available(settings):
        return None
    if mode not in ("auto", "local"):
        raise BackendError(f"unknown rationale backend {mode!r}")
    return local.get_backend(settings)


def clear_cache() -> None:
    """Forget built backends (tests; settings changes in a long-lived process)."""
    with _lock:
        _cache.clear()
