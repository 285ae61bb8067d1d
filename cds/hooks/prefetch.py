"""Prefetch templates and their resolution, exactly as CDS Hooks defines the three cases.

- key present with data: use it (an OperationOutcome in its place means the EHR's own fetch
  failed; the spec asks the EHR to pass it on so the service does not repeat the failing call);
- key present with `null`: the EHR looked and there is no data: do not fetch again;
- key absent: the EHR chose not to, or could not, prefetch: fetch it from `fhirServer` with the
  granted bearer token, from allow-listed hosts only; if that is impossible and the data is
  required, answer 412 (the caller sees which key was missing, never a token).
- a supplied searchset Bundle with link[next] (only its first page): the remaining pages are
  followed through the same allow-listed client; if they cannot be, the key counts as absent.

Templates may use only CDS Hooks 2.0 prefetch tokens: root-level primitive context fields and the
`user*Id` tokens. `validate_template` enforces that when a service is declared.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cds.errors import BadRequest, CdsError, PrefetchUnavailable

_TOKEN = re.compile(r"\{\{\s*([^}]*?)\s*\}\}")
#: Prefetch tokens of CDS Hooks 2.0 that these services' hooks provide.
CONTEXT_TOKENS = frozenset({"context.patientId", "context.userId", "context.encounterId"})
USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}


@dataclass(frozen=True)
class PrefetchTemplate:
    key: str
    #: FHIR read ("Patient/{{context.patientId}}") or search ("ImagingStudy?patient=...").
    query: str
    #: resourceType expected under the key: the read's type, or "Bundle" for a search.
    resource_type: str
    #: Without a required key the service cannot answer honestly: 412 when it cannot be had.
    required: bool

    @property
    def is_search(self) -> bool:
        return "?" in self.query


def validate_template(query: str) -> None:
    """Reject tokens that CDS Hooks 2.0 does not define (e.g. nested context paths)."""
    for token in _TOKEN.findall(query):
        if token not in CONTEXT_TOKENS and token not in USER_TOKENS:
            raise ValueError(f"prefetch token {{{{{token}}}}} is not a CDS Hooks 2.0 prefetch token")


def render(query: str, context: Mapping[str, Any]) -> str | None:
    """Fill the tokens from the request context; None when a token has no value in this call."""
    user = context.get("userId") if isinstance(context.get("userId"), str) else ""
    missing = False

    def sub(match: re.Match[str]) -> str:
        nonlocal missing
        token = match.group(1)
        if token in CONTEXT_TOKENS:
            value = context.get(token.removeprefix("context."))
        else:
            rtype, _, rid = str(user).partition("/")
            value = rid if rtype == USER_TOKENS.get(token) else None
        if not isinstance(value, str) or not value:
            missing = True
            return ""
        return value

    rendered = _TOKEN.sub(sub, query)
    return None if missing else rendered


class FhirSource(Protocol):
    """The EHR's FHIR server as the prefetch resolver needs it (see cds.hooks.fhirsource)."""

    def read(self, path: str) -> dict[str, Any] | None:
        """The resource at `path`, or None when the server says it does not exist (404/410)."""
        ...

    def search(self, query: str) -> dict[str, Any]:
        """A searchset Bundle holding every page's entries (next links followed)."""
        ...


def _check_shape(template: PrefetchTemplate, value: dict[str, Any]) -> dict[str, Any] | None:
    rtype = value.get("resourceType")
    if rtype == "OperationOutcome":
        if template.required:
            raise PrefetchUnavailable(
                f"prefetch '{template.key}' holds an OperationOutcome: the EHR could not provide it"
            )
        return None
    if rtype != template.resource_type:
        raise BadRequest(f"prefetch.{template.key}: expected a {template.resource_type} resource")
    if rtype == "Bundle" and not isinstance(value.get("entry", []), list):
        raise BadRequest(f"prefetch.{template.key}: Bundle.entry must be a list")
    return value


def _next_link(bundle: Mapping[str, Any]) -> str | None:
    links = bundle.get("link")
    for link in links if isinstance(links, list) else []:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return str(link["url"])
    return None


def _complete_pages(
    template: PrefetchTemplate, value: dict[str, Any], source: FhirSource | None
) -> dict[str, Any] | None:
    """A supplied searchset Bundle with every page's entries, or None when the rest cannot be had.

    The EHR may prefetch only the first page of a search (link[next] present). Using that page alone
    would silently drop studies, so the remaining pages are fetched through the allow-listed FHIR
    client (same-origin next links, the granted token); when that is impossible the key counts as
    absent (the caller fetches the whole search, or answers 412 for required data).
    """
    next_url = _next_link(value)
    if next_url is None:
        return value
    if source is None:
        return None
    try:
        rest = source.search(next_url)
    except CdsError:
        return None
    entries = list(value.get("entry") or []) + list(rest.get("entry") or [])
    merged = {k: v for k, v in value.items() if k not in ("link", "entry")}
    if entries:
        merged["entry"] = entries
    return merged


def resolve(
    templates: tuple[PrefetchTemplate, ...],
    supplied: Mapping[str, dict[str, Any] | None] | None,
    context: Mapping[str, Any],
    source: FhirSource | None,
) -> dict[str, dict[str, Any] | None]:
    """Data for every template key: supplied, explicitly empty (None) or fetched.

    An optional key that can be neither supplied nor fetched is left out of the result; a
    required one raises PrefetchUnavailable (412).
    """
    supplied = supplied or {}
    data: dict[str, dict[str, Any] | None] = {}
    for template in templates:
        if template.key in supplied:
            value = supplied[template.key]
            checked = None if value is None else _check_shape(template, value)
            if checked is None or checked.get("resourceType") != "Bundle":
                data[template.key] = checked
                continue
            complete = _complete_pages(template, checked, source)
            if complete is not None:
                data[template.key] = complete
                continue
            # A truncated search that cannot be completed: as if the key were absent.
        query = render(template.query, context)
        if query is None:
            continue  # e.g. an encounter template without an encounter in context
        if source is None:
            if template.required:
                raise PrefetchUnavailable(
                    f"prefetch '{template.key}' was not supplied (or only its first page) and no usable"
                    " fhirServer was given"
                )
            continue
        try:
            fetched = source.search(query) if template.is_search else source.read(query)
        except CdsError as exc:
            if template.required:
                raise PrefetchUnavailable(
                    f"prefetch '{template.key}' was not supplied and fetching it from fhirServer failed"
                ) from exc
            continue
        data[template.key] = None if fetched is None else _check_shape(template, fetched)
    return data
