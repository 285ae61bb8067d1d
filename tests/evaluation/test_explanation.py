"""Faithfulness: the studies' cached scores are summarised by cds.explain.faithfulness.aggregate."""

from __future__ import annotations

import pickle

import pytest

from cds.evaluation import explanation


def test_section_aggregates_scored_and_failed_studies() -> None:
    if explanation.faithfulness_available() is not None:
        pytest.skip("cds.explain.faithfulness not importable here")
    from cds.explain.faithfulness import StudyScores

    blobs = [
        pickle.dumps(("ok", StudyScores([], [], 1, 2, {"no_cause_mask": 1}))),
        pickle.dumps(("failed", "study_failed:StageError")),
    ]
    out = explanation.faithfulness_section(blobs, ["S1", "S2"])
    assert out["available"] is True and out["studies"] == ["S1", "S2"]
    assert out["n_studies"] == 2
    assert out["skipped"] == {"study_failed:StageError": 1, "no_cause_mask": 1}
    assert out["level_agreement"] == {"hits": 1, "n": 2, "rate": 0.5}


def test_section_without_scores_says_so() -> None:
    assert explanation.faithfulness_section([], [])["available"] is False


def test_unusable_cache_is_reported_not_raised() -> None:
    if explanation.faithfulness_available() is not None:
        pytest.skip("cds.explain.faithfulness not importable here")
    out = explanation.faithfulness_section([b"not a pickle"], ["S1"])
    assert out["available"] is False and "unusable" in out["reason"]
