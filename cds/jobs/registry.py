"""Job handlers per JobKind, and what a handler is given (JobContext).

A handler is plain code over a JobContext, so the same handler runs in the local thread runner and
in a Celery worker. It signals "do not retry" with PermanentJobError; any other exception is a
failed attempt that the runner retries with back-off until max_attempts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cds.config import Settings
from cds.errors import CdsError
from cds.jobs.kinds import JobKind
from cds.store.db import Database


class PermanentJobError(CdsError):
    """Retrying cannot help (bad payload, pipeline or models missing): fail the job now."""


@dataclass(frozen=True)
class JobContext:
    job_id: int
    kind: JobKind
    key: str
    payload: Mapping[str, Any]
    attempt: int
    max_attempts: int
    db: Database
    settings: Settings

    @property
    def final_attempt(self) -> bool:
        return self.attempt >= self.max_attempts


@dataclass(frozen=True)
class JobHandler:
    """`run` does the work; `on_failure` (optional) records the final failure in domain terms,
    e.g. marks the analysis FAILED with the reason, so users see why instead of 'pending' forever."""

    run: Callable[[JobContext], None]
    on_failure: Callable[[JobContext, str], None] | None = None


class HandlerRegistry:
    def __init__(self) -> None:
        self._handlers: dict[JobKind, JobHandler] = {}

    def register(
        self,
        kind: JobKind,
        run: Callable[[JobContext], None],
        on_failure: Callable[[JobContext, str], None] | None = None,
    ) -> None:
        self._handlers[kind] = JobHandler(run, on_failure)

    def get(self, kind: JobKind) -> JobHandler | None:
        return self._handlers.get(kind)

    @property
    def kinds(self) -> frozenset[JobKind]:
        return frozenset(self._handlers)
