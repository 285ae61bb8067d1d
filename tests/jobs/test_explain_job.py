"""The EXPLAIN job: one record and one job per analysis; a clear failure without cds.explain."""

from __future__ import annotations

import sys

import pytest

from cds.config import Settings
from cds.domain import AnalysisResult, AnalysisStatus, ExplanationStatus
from cds.jobs import JobStatus
from cds.jobs.explanation import request_explanation
from cds.jobs.handlers import default_registry
from cds.jobs.queue import JobQueue
from cds.jobs.runner import LocalRunner
from cds.store import queries
from cds.store.db import Database


def test_missing_explain_module_fails_with_reason(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cds.explain.job", None)
    with db.session() as s:
        queries.upsert_study(s, "1.2")
        analysis_id = queries.save_analysis(s, "1.2", AnalysisResult(status=AnalysisStatus.COMPLETE)).id
    queue = JobQueue(db)
    first = request_explanation(db, queue, analysis_id)
    second = request_explanation(db, queue, analysis_id)
    assert first.id == second.id
    runner = LocalRunner(queue, default_registry(), Settings(), retry_delay_s=0)
    assert runner.run_until_idle() == 1
    with db.session(readonly=True) as s:
        explanation = queries.ensure_explanation(s, analysis_id)
    assert explanation.status is ExplanationStatus.FAILED
    assert explanation.reason is not None and "explanation module unavailable" in explanation.reason
    assert queue.counts()[JobStatus.FAILED] == 1
