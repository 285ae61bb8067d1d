"""/healthz, /readyz and /metrics (mounted at the root, outside /cds-services).

- /healthz: liveness. The process answers HTTP; nothing else is checked, so a database outage
  never makes an orchestrator restart every web process (that is what /readyz is for).
- /readyz: 200 when every dependency check passes (cds.ops.readiness), else 503 with the failed
  checks; a load balancer takes the instance out of rotation meanwhile.
- /metrics: Prometheus text format (cds.ops.metrics).
None of them needs authentication or returns patient data; expose them to the monitoring network
only (the reverse proxy should not route them from outside).
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, current_app

from cds.extensions import services

bp = Blueprint("ops", __name__)

_JSON = "application/json"
_NO_STORE = {"Cache-Control": "no-store"}


def _json(body: dict[str, Any], status: int) -> Response:
    return Response(json.dumps(body), status=status, mimetype=_JSON, headers=_NO_STORE)


@bp.get("/healthz")
def healthz() -> Response:
    return _json({"status": "ok"}, 200)


@bp.get("/readyz")
def readyz() -> Response:
    from cds.ops.readiness import check_all

    svc = services()
    result = check_all(svc.db, svc.settings, current_app.config.get("CDS_MODELS_DIR"))
    return _json(result.to_json(), 200 if result.ready else 503)


@bp.get("/metrics")
def metrics() -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    from cds.ops.metrics import build_registry, render
    from cds.ops.readiness import REQUIRED_MODELS

    svc = services()
    registry = build_registry(svc.db, svc.settings, REQUIRED_MODELS, current_app.config.get("CDS_MODELS_DIR"))
    return Response(
        render(registry), status=200, mimetype=None, content_type=CONTENT_TYPE_LATEST, headers=_NO_STORE
    )
