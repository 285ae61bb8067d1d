"""The product's job handlers, registered per JobKind (used by local workers and Celery alike)."""

from __future__ import annotations

from cds.jobs.analysis import on_analyze_failure, run_analyze
from cds.jobs.explanation import on_explain_failure, run_explain
from cds.jobs.kinds import JobKind
from cds.jobs.registry import HandlerRegistry


def default_registry() -> HandlerRegistry:
    registry = HandlerRegistry()
    registry.register(JobKind.ANALYZE, run_analyze, on_analyze_failure)
    registry.register(JobKind.EXPLAIN, run_explain, on_explain_failure)
    return registry
