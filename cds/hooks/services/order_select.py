"""order-select: when a lumbar spine MRI is selected, show what the prior lumbar MRI showed.

Only the orders in `selections` are considered: draftOrders also holds earlier unsigned orders.
"""

from __future__ import annotations

from typing import Any

from cds.hooks.cards import Framing
from cds.hooks.models import OrderSelectContext
from cds.hooks.orders import lumbar_mri_orders
from cds.hooks.service import HookCall, ServiceDefinition
from cds.hooks.services.common import TEMPLATES, USAGE, study_cards


def decide(call: HookCall) -> list[dict[str, Any]]:
    orders = lumbar_mri_orders(call.context.draftOrders, selections=frozenset(call.context.selections))
    if not orders:
        return []
    refs = frozenset(o.reference for o in orders if o.reference)
    return study_cards(call, Framing.PRIOR, exclude_orders=refs)


SERVICE = ServiceDefinition(
    id="lumbar-mri-order-select",
    hook="order-select",
    title="Lumbar spine MRI order: prior imaging",
    description=(
        "When a lumbar spine MRI is selected for ordering, shows the AI findings of the patient's "
        "prior lumbar spine MRI (date and stenosis grades)."
    ),
    context_model=OrderSelectContext,
    prefetch=TEMPLATES,
    decide=decide,
    usage_requirements=USAGE,
)
