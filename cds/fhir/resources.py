"""Validation of FHIR R4 JSON through the fhir.resources R4B models.

R4B is wire-compatible with R4 for every resource this service builds or reads (DiagnosticReport,
Observation, Device, Media, Bundle, Patient, ImagingStudy, ServiceRequest). Every resource leaves
the package only after a round trip through its model, so a misspelt element or a wrong type fails
here, in our tests, rather than in an EHR.

Error messages carry element paths and pydantic's reason, never the offending values: resources
hold PHI and messages end up in logs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from cds.errors import BadRequest


class InvalidResource(BadRequest):
    """A FHIR resource (built here or received) does not conform to the R4 structure."""


def _describe(exc: ValidationError, limit: int = 5) -> str:
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(root)"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = exc.error_count() - limit
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)


def validate_resource(
    data: Mapping[str, Any], resource_type: str | None = None, *, normalise: bool = True
) -> dict[str, Any]:
    """Validate one resource (of `resource_type` if given) and return it as a JSON dict.

    normalise=True returns the model's own serialisation (for JSON received from elsewhere);
    normalise=False returns a plain copy of the input after validation, which halves the cost for
    resources this package built itself (serialising the models is slower than validating them).
    Raises InvalidResource when the JSON is not a valid R4 resource of that type.
    """
    from fhir.resources.R4B import get_fhir_model_class

    if not isinstance(data, Mapping):
        raise InvalidResource("a FHIR resource must be a JSON object")
    actual = data.get("resourceType")
    if not isinstance(actual, str) or not actual:
        raise InvalidResource("resourceType missing")
    if resource_type is not None and actual != resource_type:
        raise InvalidResource(f"expected a {resource_type}, got a {actual}")
    try:
        model_cls = get_fhir_model_class(actual)
    except (KeyError, ValueError) as exc:
        raise InvalidResource(f"unknown resourceType {actual!r}") from exc
    try:
        model = model_cls.model_validate(dict(data))
    except ValidationError as exc:
        raise InvalidResource(f"invalid {actual}: {_describe(exc)}") from exc
    if not normalise:
        return dict(data)
    dumped: dict[str, Any] = model.model_dump(mode="json", exclude_none=True)
    return dumped
