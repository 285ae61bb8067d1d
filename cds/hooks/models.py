"""Pydantic models of what an EHR sends: parsed once at the boundary, typed everywhere after.

Why pydantic here: the CDS Hooks request is untrusted JSON from another organisation's system;
a strict model turns every malformed field into one 400 with a precise location, and the rest of
the code can rely on types instead of re-checking dictionaries. Unknown members (notably
`extension`, which the spec says services must tolerate) are ignored, not rejected.

Validation messages name the field and the rule, never the value: values can be PHI.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from cds.errors import BadRequest

#: FHIR `id` datatype: [A-Za-z0-9\-\.]{1,64}
FhirId = Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9\-.]{1,64}$")]
#: "ResourceType/id" as CDS Hooks uses for userId and order selections.
_REFERENCE = r"^[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64}$"
FhirReference = Annotated[str, StringConstraints(strict=True, pattern=_REFERENCE)]
UserReference = Annotated[
    str,
    StringConstraints(
        strict=True, pattern=r"^(Practitioner|PractitionerRole|Patient|RelatedPerson)/[A-Za-z0-9\-.]{1,64}$"
    ),
]
NonEmpty = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=10_000)]


M = TypeVar("M", bound=BaseModel)


class _Lenient(BaseModel):
    """Unknown members are tolerated (CDS Hooks extensibility) and dropped."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class FhirAuthorization(_Lenient):
    access_token: Annotated[str, StringConstraints(strict=True, min_length=1, max_length=16_384)]
    token_type: Literal["Bearer"]
    expires_in: Annotated[int, Field(strict=True, ge=0)]
    scope: NonEmpty
    subject: NonEmpty
    patient: FhirId | None = None

    def __repr__(self) -> str:  # never let the token reach a log through a repr
        return f"FhirAuthorization(token_type={self.token_type!r}, scope={self.scope!r}, access_token=***)"

    __str__ = __repr__


class HookRequest(_Lenient):
    """The envelope common to every hook; `context` is validated by the service's own model."""

    hook: NonEmpty
    hookInstance: Annotated[UUID, Field(strict=False)]
    fhirServer: Annotated[str, StringConstraints(strict=True, min_length=1, max_length=2048)] | None = None
    fhirAuthorization: FhirAuthorization | None = None
    context: dict[str, Any]
    prefetch: dict[str, dict[str, Any] | None] | None = None
    extension: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check_server(self) -> HookRequest:
        if self.fhirServer is not None:
            parts = urlsplit(self.fhirServer)
            if parts.scheme not in {"http", "https"} or not parts.hostname:
                raise ValueError("fhirServer must be an absolute http(s) URL")
        if self.fhirAuthorization is not None and self.fhirServer is None:
            raise ValueError("fhirAuthorization requires fhirServer")
        return self

    def __repr__(self) -> str:
        return f"HookRequest(hook={self.hook!r}, hookInstance={self.hookInstance})"


class PatientViewContext(_Lenient):
    userId: UserReference
    patientId: FhirId
    encounterId: FhirId | None = None


class OrderSignContext(_Lenient):
    userId: UserReference
    patientId: FhirId
    encounterId: FhirId | None = None
    draftOrders: dict[str, Any]

    @model_validator(mode="after")
    def _bundle(self) -> OrderSignContext:
        if self.draftOrders.get("resourceType") != "Bundle":
            raise ValueError("draftOrders must be a FHIR Bundle")
        entries = self.draftOrders.get("entry", [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ValueError("draftOrders.entry must be a list of objects")
        return self


class OrderSelectContext(OrderSignContext):
    selections: Annotated[list[FhirReference], Field(min_length=1)]


class AcceptedSuggestion(_Lenient):
    id: NonEmpty


class Coding(_Lenient):
    code: NonEmpty
    system: NonEmpty | None = None
    display: NonEmpty | None = None


class OverrideReason(_Lenient):
    reason: Coding | None = None
    userComment: Annotated[str, StringConstraints(strict=True, max_length=2000)] | None = None


class FeedbackItem(_Lenient):
    card: Annotated[UUID, Field(strict=False)]
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = None
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: datetime

    @model_validator(mode="after")
    def _consistent(self) -> FeedbackItem:
        if self.outcome == "accepted":
            if not self.acceptedSuggestions:
                raise ValueError("acceptedSuggestions is required when outcome is accepted")
            if self.overrideReason is not None:
                raise ValueError("overrideReason is only allowed when outcome is overridden")
        elif self.acceptedSuggestions:
            raise ValueError("acceptedSuggestions is only allowed when outcome is accepted")
        if self.outcomeTimestamp.tzinfo is None:
            raise ValueError("outcomeTimestamp must carry a time zone")
        return self


class FeedbackRequest(_Lenient):
    feedback: Annotated[list[FeedbackItem], Field(min_length=1, max_length=100)]


def _describe(error: ValidationError) -> str:
    """'where: what' for the first few problems, without echoing any submitted value."""
    parts: list[str] = []
    for err in error.errors(include_url=False, include_input=False, include_context=False)[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        if err["type"] == "json_invalid":
            return "request body is not valid JSON"
        msg = "must be a UUID" if err["type"].startswith("uuid") else err["msg"]
        # pydantic's pattern message contains the regex only, not the value; keep it short.
        msg = re.sub(r"\s+", " ", msg)[:120]
        parts.append(f"{where}: {msg}")
    return "; ".join(parts) or "invalid request"


def parse_json_model(model: type[M], raw: bytes, prefix: str = "") -> M:
    """Parse raw request bytes into `model`, or raise BadRequest naming the bad fields."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise BadRequest(prefix + _describe(exc)) from None


def parse_model(model: type[M], data: Any, location: str) -> M:
    """Validate an already-decoded object (e.g. `context`); `location` prefixes field names."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(f"{location}." + _describe(exc)) from None
