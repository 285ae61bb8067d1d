"""A CDS service declared once: its discovery entry, context model, prefetch and decision.

Each service module (cds/hooks/services/*.py) builds one ServiceDefinition; discovery, request
validation and prefetch handling are all derived from it, so the advertised contract and the
enforced one cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from pydantic import BaseModel

from cds.errors import BadRequest
from cds.hooks.cards import CardRequest, Framing, Presenter
from cds.hooks.catalog import AnalysisCatalog
from cds.hooks.models import HookRequest
from cds.hooks.prefetch import FhirSource, PrefetchTemplate, resolve, validate_template
from cds.hooks.reports import reports_by_study


@dataclass
class HookCall:
    """One validated call, with lazy prefetch: order hooks resolve it only for relevant orders."""

    service: ServiceDefinition
    request: HookRequest
    context: Any
    catalog: AnalysisCatalog
    presenter: Presenter
    today: date
    fhir_source: FhirSource | None
    _prefetched: dict[str, dict[str, Any] | None] | None = field(default=None, repr=False)

    @property
    def patient_id(self) -> str:
        return str(self.context.patientId)

    def prefetched(self) -> dict[str, dict[str, Any] | None]:
        if self._prefetched is None:
            data = resolve(
                self.service.prefetch, self.request.prefetch, self.request.context, self.fhir_source
            )
            patient = data.get("patient")
            if patient is not None and patient.get("id") not in (None, self.patient_id):
                raise BadRequest("prefetch.patient is not the patient in context.patientId")
            self._prefetched = data
        return self._prefetched

    def card_request(self, framing: Framing) -> CardRequest:
        reports = reports_by_study(self.prefetched().get("reports"))
        return CardRequest(framing=framing, patient_id=self.patient_id, today=self.today, reports=reports)


Decide = Callable[[HookCall], list[dict[str, Any]]]


@dataclass(frozen=True)
class ServiceDefinition:
    id: str
    hook: str
    title: str
    description: str
    context_model: type[BaseModel]
    prefetch: tuple[PrefetchTemplate, ...]
    decide: Decide
    usage_requirements: str | None = None

    def __post_init__(self) -> None:
        for template in self.prefetch:
            validate_template(template.query)

    def discovery(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "prefetch": {t.key: t.query for t in self.prefetch},
        }
        if self.usage_requirements:
            entry["usageRequirements"] = self.usage_requirements
        return entry
