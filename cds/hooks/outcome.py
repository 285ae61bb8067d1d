"""FHIR OperationOutcome bodies for every error response of the service.

CDS Hooks asks for an OperationOutcome on 400/412 responses; the whole app uses the same shape
so that a client (or a person reading a log) always sees one structure. A 401 carries no
diagnostics on purpose: telling a caller why its token failed helps an attacker more than it
helps a correctly configured EHR.
"""

from __future__ import annotations

from typing import Any

from cds.errors import CdsError, Unauthorized

#: Diagnostics are free text meant for integrators; keep them short so that nothing a caller
#: sent (which could be PHI) is echoed at length.
_MAX_DIAGNOSTICS = 300


def operation_outcome(code: str, diagnostics: str | None = None, severity: str = "error") -> dict[str, Any]:
    """One-issue OperationOutcome. `code` is from http://hl7.org/fhir/issue-type."""
    issue: dict[str, Any] = {"severity": severity, "code": code}
    if diagnostics:
        issue["diagnostics"] = diagnostics[:_MAX_DIAGNOSTICS]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def outcome_for_error(error: CdsError) -> dict[str, Any]:
    """The body a client sees for a product error: its issue code and message, never a trace."""
    if isinstance(error, Unauthorized):
        return operation_outcome(error.issue_code)
    return operation_outcome(error.issue_code, error.message)


def outcome_for_unexpected() -> dict[str, Any]:
    """Body for a bug (an exception outside the CdsError tree): nothing about its cause leaks."""
    return operation_outcome("exception", "internal error")
