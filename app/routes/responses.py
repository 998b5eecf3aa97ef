"""The error statuses each route documents in the OpenAPI schema, defined once.

Every error body is `{"detail": ...}`: a message, or (422) a list of `{loc, msg, type}` as FastAPI's own
validation errors. Routes list the statuses they can answer with `responses=errors(...)`; the 401 every
protected route shares is declared once per router (`app.auth.UNAUTHORIZED_RESPONSE`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str
    ctx: dict[str, Any] | None = None


class ErrorBody(BaseModel):
    """`{"detail": ...}`: a message, or a list of issues each naming the field (`loc`)."""

    detail: str | list[ValidationIssue] = Field(description="What went wrong, naming the field")


_DESCRIPTIONS = {
    400: "Malformed request (e.g. a cursor this API did not return)",
    401: "Missing, unknown or revoked API key (`WWW-Authenticate: Bearer`)",
    404: "No such resource (or not yours)",
    405: "Method not allowed here; `Allow` lists the methods that are",
    409: "Conflicts with the resource's current state",
    413: "Request body larger than MAX_BODY_BYTES (uploads: MAX_UPLOAD_BYTES)",
    422: "Invalid input; `detail` names the field",
    429: "Too many requests or active searches; `Retry-After` says when to retry",
    500: "The server failed at it (an export process, for one); `detail` says how",
    503: "A dependency (database, Redis) is unreachable",
}

def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses, each with the `{"detail": ...}` body."""
    return {status: {"model": ErrorBody, "description": _DESCRIPTIONS[status]} for status in statuses}
