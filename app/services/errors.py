"""Errors the service layer raises; `app.main` turns each into its HTTP status and `{"detail": ...}`."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    status_code = 400
    headers: dict[str, str] | None = None  # sent with the answer (Retry-After of a 429)

    def __init__(self, detail: Any) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(ServiceError):
    status_code = 400


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class PayloadTooLarge(ServiceError):
    status_code = 413


class Unprocessable(ServiceError):
    """Input that is well formed but cannot be used (an unknown dataset id, an invalid .npz)."""

    status_code = 422

    def __init__(
        self,
        message: str,
        loc: tuple[str | int, ...] = ("body",),
        error_type: str = "value_error",
        ctx: dict[str, Any] | None = None,
    ):
        # The same shape as FastAPI's own validation errors, so clients parse every 422 alike.
        error: dict[str, Any] = {"loc": list(loc), "msg": message, "type": error_type}
        if ctx is not None:
            error["ctx"] = ctx
        super().__init__([error])


class TooManyRequests(ServiceError):
    """A per-owner quota is used up; `Retry-After` says when to try again."""

    status_code = 429

    def __init__(self, detail: Any, retry_after: int) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after)}


class ServiceUnavailable(ServiceError):
    status_code = 503
