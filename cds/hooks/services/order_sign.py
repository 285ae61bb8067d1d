"""order-sign: when a lumbar spine MRI order is signed, show what the prior lumbar MRI showed."""

from __future__ import annotations

from typing import Any

from cds.hooks.cards import Framing
from cds.hooks.models import OrderSignContext
from cds.hooks.orders import lumbar_mri_orders
from cds.hooks.service import HookCall, ServiceDefinition
from cds.hooks.services.common import TEMPLATES, USAGE, study_cards


def decide(call: HookCall) -> list[dict[str, Any]]:
    orders = lumbar_mri_orders(call.context.draftOrders, selections=None)
    if not orders:
        return []
    refs = frozenset(o.reference for o in orders if o.reference)
    return study_cards(call, Framing.PRIOR, exclude_orders=refs)


SERVICE = ServiceDefinition(
    id="lumbar-mri-order-sign",
    hook="order-sign",
    title="Lumbar spine MRI order: prior imaging",
    description=(
        "When a lumbar spine MRI order is signed, shows the AI findings of the patient's prior "
        "lumbar spine MRI (date and stenosis grades), so that a recent study is not repeated unknowingly."
    ),
    context_model=OrderSignContext,
    prefetch=TEMPLATES,
    decide=decide,
    usage_requirements=USAGE,
)
