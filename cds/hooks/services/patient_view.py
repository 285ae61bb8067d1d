"""patient-view: the results of the patient's analysed lumbar spine MRI studies."""

from __future__ import annotations

from typing import Any

from cds.hooks.cards import Framing
from cds.hooks.models import PatientViewContext
from cds.hooks.service import HookCall, ServiceDefinition
from cds.hooks.services.common import TEMPLATES, USAGE, study_cards


def decide(call: HookCall) -> list[dict[str, Any]]:
    return study_cards(call, Framing.CURRENT)


SERVICE = ServiceDefinition(
    id="lumbar-mri-patient-view",
    hook="patient-view",
    title="Lumbar spine MRI: AI findings",
    description=(
        "Shows the AI read (stenosis grades per level with the measurements behind them) of the "
        "patient's most recent lumbar spine MRI, and queues unanalysed studies for analysis."
    ),
    context_model=PatientViewContext,
    prefetch=TEMPLATES,
    decide=decide,
    usage_requirements=USAGE,
)
