"""Which cards to show for a patient's lumbar MRI studies: the decision, apart from the wording.

- newest study analysed -> its result card;
- newest study not analysed yet -> analysis queued (idempotently) and a "pending" card, plus the
  result card of the newest older study that is analysed, if any (so the clinician still sees the
  last known state);
- newest study unanalysable/failed -> a card saying so, plus the newest analysed older study;
- no lumbar MRI -> no card.
Studies acquired for the order being placed (ImagingStudy.basedOn) are ignored by order hooks:
they speak only about prior imaging.
"""

from __future__ import annotations

from typing import Any

from cds.domain import AnalysisStatus
from cds.hooks.cards import CardRequest, Presenter, pending_card, result_card, unavailable_card
from cds.hooks.catalog import AnalysisCatalog
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
    if newest_stored is not None and newest_stored.status is AnalysisStatus.COMPLETE:
        return [result_card(newest_stored, newest, req, presenter)]
    cards: list[dict[str, Any]] = []
    if newest_stored is not None and newest_stored.status in _TERMINAL:
        cards.append(unavailable_card(newest_stored, newest, req))
    else:
        catalog.request_analysis(newest, req.patient_id)
        cards.append(pending_card(newest, req))
    for older in studies[1:]:
        older_stored = stored.get(older.study_uid)
        if older_stored is not None and older_stored.status is AnalysisStatus.COMPLETE:
            cards.append(result_card(older_stored, older, req, presenter))
            break
    return cards
