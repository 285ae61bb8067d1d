"""Small readers over FHIR JSON as it arrives from EHRs: tolerant of shape, strict about meaning.

The hooks read a handful of fields from ServiceRequest and ImagingStudy resources sent by another
system; a missing or oddly typed field must mean "not present", never a crash (500). Full model
validation with fhir.resources is reserved to cds.fhir, for what this service *emits*.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import date, datetime
from typing import Any

from cds.hooks.codes import canonical_system


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


_EMPTY: Mapping[str, Any] = {}


def as_dict(value: Any) -> Mapping[str, Any]:
    if type(value) is dict:  # parsed JSON: skip the (slower) ABC check
        return value
    return value if isinstance(value, Mapping) else _EMPTY


def codings(concept: Any) -> Iterator[tuple[str, str]]:
    """(canonical system, code) pairs of a CodeableConcept (or of a bare Coding)."""
    concept = as_dict(concept)
    items = as_list(concept.get("coding")) if "coding" in concept else [concept]
    for coding in items:
        coding = as_dict(coding)
        system = canonical_system(coding.get("system"))
        code = coding.get("code")
        if system and isinstance(code, str) and code:
            yield system, code.strip()


def bundle_resources(bundle: Mapping[str, Any] | None, resource_type: str) -> Iterator[Mapping[str, Any]]:
    """Resources of one type in a Bundle's entries (OperationOutcome entries and others skipped)."""
    if not bundle:
        return
    for entry in as_list(bundle.get("entry")):
        resource = as_dict(as_dict(entry).get("resource"))
        if resource.get("resourceType") == resource_type:
            yield resource


def text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def fhir_date(value: Any) -> date | None:
    """The calendar date of a FHIR date/dateTime/instant ('2021-03-08...'); None when absent or malformed."""
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        return datetime.fromisoformat(value[:10]).date()
    except ValueError:
        return None
