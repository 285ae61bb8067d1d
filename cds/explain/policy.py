"""When a finished quick read gets its explanation without anyone asking (the eager policy).

Explanations are on demand by default (the card's explain link, the API, the viewer); issue 5 asks
that they be computed eagerly when the result is one a clinician is most likely to question: any
finding flagged uncertain, or -- by default -- any finding whose deciding measurement lies close
to a grade threshold or whose "present" probability lies close to 0.5. Then the heatmaps and the
rationale are ready by the time the card is opened.

Setting ``CDS_EXPLAIN_EAGER``: ``uncertain_or_near_threshold`` (default) | ``uncertain`` | ``off``;
``CDS_EXPLAIN_NEAR_MARGIN`` (default 0.10): "near" = within this fraction of a threshold value
(e.g. DSCA 75 mm2 +/- 7.5 mm2) or of the probability 0.5 (0.40-0.60).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from cds.config import Settings
from cds.domain import THRESHOLDS, AnalysisResult, AnalysisStatus, Finding

if TYPE_CHECKING:
    from cds.store.db import Database

log = logging.getLogger(__name__)

PRESENT_PROBABILITY = 0.5


class EagerPolicy(StrEnum):
    UNCERTAIN_OR_NEAR_THRESHOLD = "uncertain_or_near_threshold"
    UNCERTAIN = "uncertain"
    OFF = "off"


@dataclass(frozen=True)
class EagerDecision:
    explain: bool
    why: str  # PHI-free, for logs and the job payload


def near_threshold(finding: Finding, margin: float) -> bool:
    """Deciding measurement within ``margin`` (relative) of a grade cut-off, or P(present)
    within ``margin`` of 0.5."""
    if abs(finding.probability - PRESENT_PROBABILITY) < margin:
        return True
    value = finding.deciding_value
    if value is None:
        return False
    t = THRESHOLDS[finding.condition]
    return any(abs(value - cut) <= margin * cut for cut in (t.moderate_below, t.severe_below))


def eager_decision(result: AnalysisResult, settings: Settings) -> EagerDecision:
    """Whether this finished analysis should be explained now, and why."""
    try:
        policy = EagerPolicy(settings.explain_eager)
    except ValueError:
        policy = EagerPolicy.UNCERTAIN_OR_NEAR_THRESHOLD
    if policy is EagerPolicy.OFF or result.status is not AnalysisStatus.COMPLETE:
        return EagerDecision(False, "policy off" if policy is EagerPolicy.OFF else "analysis not complete")
    for f in result.findings:
        if f.uncertain:
            return EagerDecision(True, f"{f.level.value} {f.condition.value} flagged uncertain")
    if policy is EagerPolicy.UNCERTAIN_OR_NEAR_THRESHOLD:
        for f in result.findings:
            if near_threshold(f, settings.explain_near_margin):
                return EagerDecision(True, f"{f.level.value} {f.condition.value} near its threshold")
    return EagerDecision(False, "no finding uncertain or near a threshold")


def explain_if_wanted(db: Database, settings: Settings, analysis_id: str, result: AnalysisResult) -> bool:
    """Enqueue the EXPLAIN job for a just-stored analysis when the policy says so (best effort:
    a failure here is logged and never fails the analysis). Returns whether a job was requested."""
    decision = eager_decision(result, settings)
    if not decision.explain:
        return False
    try:
        from cds.jobs.explanation import request_explanation
        from cds.jobs.queue import JobQueue

        queue = JobQueue(db)
        try:  # with CDS_JOBS_BACKEND=celery the job must also be published to the broker
            from cds.jobs.celery_dispatch import attach_backend

            queue = attach_backend(queue, settings)
        except ImportError:
            pass
        request_explanation(db, queue, analysis_id)
    except Exception as exc:  # the analysis is stored; an explanation can still be requested later
        log.warning("eager explanation not requested (%s): %s", decision.why, type(exc).__name__)
        return False
    log.info("eager explanation requested: %s", decision.why)
    return True
