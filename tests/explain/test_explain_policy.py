"""Eager explanation policy: uncertain / near a threshold / off, and the enqueue it triggers."""

from __future__ import annotations

import pytest

from cds.config import Settings, SettingsError
from cds.domain import AnalysisResult, AnalysisStatus, Condition, Finding, Grade, Level, MeasurementName
from cds.explain.policy import eager_decision, explain_if_wanted, near_threshold
from cds.jobs.explanation import explain_key
from cds.jobs.queue import JobQueue
from cds.store import queries
from cds.store.db import Database


def _canal(dsca: float, p: float = 0.9, uncertain: bool = False) -> Finding:
    grade = Grade.SEVERE if dsca < 75 else Grade.MODERATE if dsca < 100 else Grade.NORMAL_MILD
    return Finding(
        Level.L4_L5, Condition.SPINAL_CANAL, grade, p, {MeasurementName.DSCA_MM2: dsca}, uncertain=uncertain
    )


def _result(*findings: Finding) -> AnalysisResult:
    return AnalysisResult(status=AnalysisStatus.COMPLETE, findings=findings)


def test_near_threshold_by_measurement_and_by_probability() -> None:
    assert near_threshold(_canal(78.0), 0.10)  # within 7.5 mm2 of 75
    assert near_threshold(_canal(104.0), 0.10)  # within 10 mm2 of 100
    assert not near_threshold(_canal(60.0), 0.10)
    assert near_threshold(_canal(60.0, p=0.55), 0.10)  # P(present) close to 0.5
    assert not near_threshold(_canal(60.0, p=0.65), 0.10)


@pytest.mark.parametrize(
    ("policy", "finding", "expected"),
    [
        ("uncertain_or_near_threshold", _canal(60.0, uncertain=True), True),
        ("uncertain_or_near_threshold", _canal(78.0), True),
        ("uncertain_or_near_threshold", _canal(60.0), False),
        ("uncertain", _canal(78.0), False),
        ("uncertain", _canal(60.0, uncertain=True), True),
        ("off", _canal(60.0, uncertain=True), False),
    ],
)
def test_policy_decisions(policy: str, finding: Finding, expected: bool) -> None:
    decision = eager_decision(_result(finding), Settings(explain_eager=policy))
    assert decision.explain is expected
    assert decision.why


def test_incomplete_analysis_is_never_explained() -> None:
    failed = AnalysisResult(status=AnalysisStatus.FAILED, reason="x")
    assert not eager_decision(failed, Settings()).explain


def test_settings_from_env() -> None:
    s = Settings.from_env({"CDS_EXPLAIN_EAGER": "uncertain", "CDS_EXPLAIN_NEAR_MARGIN": "0.2"})
    assert (s.explain_eager, s.explain_near_margin) == ("uncertain", 0.2)
    with pytest.raises(SettingsError):
        Settings.from_env({"CDS_EXPLAIN_EAGER": "always"})


def test_explain_if_wanted_enqueues_one_job(db: Database) -> None:
    result = _result(_canal(60.0, uncertain=True))
    with db.session() as s:
        queries.upsert_study(s, "1.2.9")
        analysis_id = queries.save_analysis(s, "1.2.9", result).id
    assert explain_if_wanted(db, Settings(), analysis_id, result)
    assert explain_if_wanted(db, Settings(), analysis_id, result)  # idempotent: same job
    assert not explain_if_wanted(db, Settings(explain_eager="off"), analysis_id, result)
    queue = JobQueue(db)
    job = queue.by_key(explain_key(analysis_id))
    assert job is not None and job.payload == {"analysis_id": analysis_id}
    assert sum(queue.counts().values()) == 1
    with db.session() as s:
        assert queries.ensure_explanation(s, analysis_id).status.value == "pending"
