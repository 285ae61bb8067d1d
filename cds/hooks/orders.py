"""Which draft orders are lumbar spine MRIs.

order-select must look only at the orders the user just selected (`selections`): draftOrders also
carries earlier unsigned orders, and advising on those would repeat cards the user already saw.
order-sign looks at every draft order, because all of them are about to be signed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cds.hooks.codes import LUMBAR_MRI_PROCEDURES
from cds.hooks.fhirjson import as_dict, as_list, codings

_ORDER_TYPES = frozenset({"ServiceRequest"})
_INACTIVE = frozenset({"revoked", "entered-in-error", "completed"})


@dataclass(frozen=True)
class LumbarMriOrder:
    """A draft ServiceRequest recognised as a lumbar spine MRI; `reference` is 'ServiceRequest/<id>'."""

    reference: str | None
    code: tuple[str, str]


def _reference(resource: Mapping[str, Any]) -> str | None:
    rid = resource.get("id")
    return f"{resource['resourceType']}/{rid}" if isinstance(rid, str) and rid else None


def lumbar_mri_orders(
    draft_orders: Mapping[str, Any], selections: frozenset[str] | None
) -> tuple[LumbarMriOrder, ...]:
    """Lumbar MRI orders among the draft orders; with `selections`, only the selected ones."""
    found: list[LumbarMriOrder] = []
    for entry in as_list(draft_orders.get("entry")):
        resource = as_dict(as_dict(entry).get("resource"))
        if resource.get("resourceType") not in _ORDER_TYPES:
            continue
        ref = _reference(resource)
        if selections is not None and ref not in selections:
            continue
        if resource.get("status") in _INACTIVE:
            continue
        code = next((c for c in codings(resource.get("code")) if c in LUMBAR_MRI_PROCEDURES), None)
        if code is not None:
            found.append(LumbarMriOrder(reference=ref, code=code))
    return tuple(found)
