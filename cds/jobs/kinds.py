"""Job vocabulary shared by the store (JobRecord columns) and the runners.

Kept apart from the queue so that cds.store can import it without importing cds.jobs' DB code
(which itself imports cds.store): no import cycle, no work at import time.
"""

from __future__ import annotations

from enum import StrEnum


class JobKind(StrEnum):
    """What a job does; one handler per kind is registered with a runner."""

    ANALYZE = "analyze"
    EXPLAIN = "explain"


class JobStatus(StrEnum):
    """queued -> running -> done | failed (a failed job with attempts left goes back to queued)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
