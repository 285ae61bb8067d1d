"""The registry of CDS services: the single list that discovery and routing are generated from."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from cds.hooks.service import ServiceDefinition
from cds.hooks.services import order_select, order_sign, patient_view

SERVICES: tuple[ServiceDefinition, ...] = (order_select.SERVICE, order_sign.SERVICE, patient_view.SERVICE)
BY_ID: Mapping[str, ServiceDefinition] = MappingProxyType({s.id: s for s in SERVICES})


def discovery() -> dict[str, Any]:
    """GET /cds-services body."""
    return {"services": [s.discovery() for s in SERVICES]}
