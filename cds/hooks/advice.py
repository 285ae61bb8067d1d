"""Which cards to show for a patient's lumbar MRI studies: the decision, apart from the wording.

- newest study analysed -> its result card;
- newest study not analysed yet -> analysis queued (idempotently) and a "pending" card, plus the
  result card of the newest older study that is analysed, if any (so the clinician still sees the
  last known state);
- newest study unanalysable/failed -> a card saying so, plus the newest analysed older study; a
  failure that may have passed (no image source, PACS outage) is retried after a back-off, a
  bounded number of times (StoredAnalysis.retry_due), with a "pending" card meanwhile;
- no lumbar MRI -> no card;
- a study whose stored record names another patient (FHIR reference) -> a warning card instead of
  its findings, and no analysis is requested for it.
Studies acquired for the order being placed (ImagingStudy.basedOn) are ignored by order hooks:
they speak only about prior imaging.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cds.domain import AnalysisStatus
from cds.hooks.cards import (
    CardRequest,
    Presenter,
    other_patient_card,
    pending_card,
    result_card,
    unavailable_card,
)
from cds.hooks.catalog import AnalysisCatalog, StoredAnalysis
from cds.hooks.studies import LumbarStudy

_TERMINAL = frozenset({AnalysisStatus.UNANALYSABLE, AnalysisStatus.FAILED})


def advise(
    studies: tuple[LumbarStudy, ...],
    req: CardRequest,
    catalog: AnalysisCatalog,
    presenter: Presenter,
    exclude_orders: frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    studies = tuple(s for s in studies if not (s.based_on & exclude_orders))
    if not studies:
        return []
    stored = catalog.lookup([s.study_uid for s in studies])
    newest = studies[0]
    newest_stored = stored.get(newest.study_uid)
    cards: list[dict[str, Any]] = []
    if newest_stored is not None and newest_stored.belongs_to_other_patient(req.patient_id):
        return [other_patient_card(newest, req), *_older_result(studies[1:], stored, req, presenter)]
    if newest_stored is not None and newest_stored.status is AnalysisStatus.COMPLETE:
        return [result_card(newest_stored, newest, req, presenter)]
    retry = newest_stored is not None and newest_stored.retry_due
    if newest_stored is not None and newest_stored.status in _TERMINAL and not retry:
        cards.append(unavailable_card(newest_stored, newest, req))
    else:
        catalog.request_analysis(newest, req.patient_id)
        cards.append(pending_card(newest, req))
    return cards + _older_result(studies[1:], stored, req, presenter)


def _older_result(
    older: tuple[LumbarStudy, ...],
    stored: Mapping[str, StoredAnalysis],
    req: CardRequest,
    presenter: Presenter,
) -> list[dict[str, Any]]:
    """The newest analysed older study's card (another patient's study: the warning instead)."""
    for study in older:
        found = stored.get(study.study_uid)
        if found is None or found.status is not AnalysisStatus.COMPLETE:
            continue
        if found.belongs_to_other_patient(req.patient_id):
            return [other_patient_card(study, req)]
        return [result_card(found, study, req, presenter)]
    return []
