"""A small error tree. Code raises these; only the HTTP edge maps them to status codes.

Why a tree rather than ad-hoc exceptions: the edge needs exactly one place that decides what a
client sees (status + OperationOutcome, never a stack trace), and the pipeline needs failures that
name the stage they came from.
"""

from __future__ import annotations


class CdsError(Exception):
    """Base of every error the product raises on purpose."""

    http_status = 500
    #: FHIR OperationOutcome issue code (http://hl7.org/fhir/issue-type)
    issue_code = "exception"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(CdsError):
    http_status = 400
    issue_code = "invalid"


class Unauthorized(CdsError):
    """The client sees 401 with no detail; the message is for our own (PHI-free) logs only."""

    http_status = 401
    issue_code = "login"


class Forbidden(CdsError):
    http_status = 403
    issue_code = "forbidden"


class NotFound(CdsError):
    http_status = 404
    issue_code = "not-found"


class Conflict(CdsError):
    http_status = 409
    issue_code = "conflict"


class PrefetchUnavailable(CdsError):
    """Prefetch key absent and the FHIR server cannot be used: CDS Hooks says 412."""

    http_status = 412
    issue_code = "incomplete"


class PayloadTooLarge(CdsError):
    http_status = 413
    issue_code = "too-costly"


class RequestTimeout(CdsError):
    """The client stopped sending its request body (socket timeout mid-body): 408."""

    http_status = 408
    issue_code = "timeout"


class UpstreamError(CdsError):
    """A server we depend on (FHIR, PACS) failed or timed out."""

    http_status = 502
    issue_code = "transient"


class IngestError(CdsError):
    """A study could not be read into volumes. `kind` is a stable machine-readable reason."""

    http_status = 422
    issue_code = "processing"

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class StageError(CdsError):
    """A pipeline stage failed; the message names the stage so a report can say which."""

    http_status = 500
    issue_code = "exception"

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage


class ModelError(CdsError):
    """Model weights missing, corrupt (hash mismatch) or incompatible with their spec."""

    http_status = 503
    issue_code = "exception"
