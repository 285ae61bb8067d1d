"""Background jobs: analysis and explanation run here, never in a hook request.

Modules: kinds (JobKind, JobStatus), queue (JobQueue: idempotent enqueue, atomic claim),
runner (LocalRunner: N worker threads polling the jobs table), handlers (ANALYZE/EXPLAIN).
Only the vocabulary is re-exported here so that importing cds.jobs stays cheap and cycle-free
(cds.store imports cds.jobs.kinds).
"""

from cds.jobs.kinds import JobKind, JobStatus

__all__ = ["JobKind", "JobStatus"]
