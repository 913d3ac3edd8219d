"""Errors every layer raises; the HTTP and WebSocket edges turn them into JSON.

Wire shape: ``{"error": {"code": str, "message": str, "details": Any}}``.
"""

from __future__ import annotations

from typing import Any


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The wire shape of every error."""
    return {"error": {"code": code, "message": message, "details": details}}


class AiriesError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, details: Any = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        if code:
            self.code = code

    def to_dict(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.details)


class BadRequestError(AiriesError):
    status_code = 400
    code = "bad_request"


class UnauthorizedError(AiriesError):
    status_code = 401
    code = "unauthorized"


class PaymentRequiredError(AiriesError):
    status_code = 402
    code = "insufficient_credits"


class ForbiddenError(AiriesError):
    status_code = 403
    code = "forbidden"


class NotFoundError(AiriesError):
    status_code = 404
    code = "not_found"

    def __init__(self, resource: str, resource_id: str | None = None) -> None:
        message = f"{resource} not found" if resource_id is None else f"{resource} '{resource_id}' not found"
        super().__init__(message, details={"resource": resource, "id": resource_id})


class ConflictError(AiriesError):
    status_code = 409
    code = "conflict"


class PayloadTooLargeError(AiriesError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaTypeError(AiriesError):
    status_code = 415
    code = "unsupported_media_type"


class ValidationFailedError(AiriesError):
    """Semantic validation failed; ``details`` is a list of ``{field, code, message}``."""

    status_code = 422
    code = "validation_failed"


class RateLimitedError(AiriesError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float | None = None, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.retry_after = retry_after


class NotAvailableError(AiriesError):
    """A feature that is not built (or not configured) here: never answer with invented data."""

    status_code = 501
    code = "not_available"


class ProviderError(AiriesError):
    """An upstream provider failed; ``details`` carries the provider's own reason."""

    status_code = 502
    code = "provider_error"

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        retryable: bool = False,
        upstream_status: int | None = None,
        retry_after: float | None = None,
        details: Any = None,
    ) -> None:
        merged = {"provider": provider, "upstream_status": upstream_status}
        if details:
            merged["reason"] = details
        super().__init__(message, details=merged)
        self.provider = provider
        self.retryable = retryable
        self.upstream_status = upstream_status
        self.retry_after = retry_after


# SQLSTATE classes worth a retry: connection exception, transaction rollback (serialisation failure, deadlock),
# insufficient resources, operator intervention (shutdown, cancel), system error; and lock_not_available.
_TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57", "58")
_TRANSIENT_SQLSTATES = ("55P03",)
_THROTTLING_CODES = {"Throttling", "ThrottlingException", "SlowDown", "RequestLimitExceeded", "RequestTimeout"}


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error (pg8000 puts the server's fields in ``args[0]``), else None."""
    orig = getattr(exc, "orig", exc)
    fields = orig.args[0] if getattr(orig, "args", None) else None
    if isinstance(fields, dict) and isinstance(fields.get("C"), str):
        return fields["C"]
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code if isinstance(code, str) else None


def is_transient(exc: BaseException) -> bool:
    """Whether the same work may succeed if tried again: a provider's 429/5xx/timeout, a lost or busy database,
    throttled or unreachable AWS. Bad data and bugs (a refused value, a constraint, a type error) are permanent:
    retrying them only delays the failure the customer has to see."""
    # Imported here: only failure paths classify, and these imports cost up to 200 ms at a cold start.
    import botocore.exceptions
    import httpx
    import sqlalchemy.exc

    if isinstance(exc, ProviderError):
        return exc.retryable
    if isinstance(exc, RateLimitedError):
        return True
    if isinstance(exc, AiriesError):
        return False
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        if exc.connection_invalidated or isinstance(
            exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError
        ):
            return True
        state = sqlstate(exc)
        return state is not None and (state[:2] in _TRANSIENT_SQLSTATE_CLASSES or state in _TRANSIENT_SQLSTATES)
    if isinstance(exc, sqlalchemy.exc.TimeoutError | sqlalchemy.exc.DisconnectionError):  # pool exhausted, dropped
        return True
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return status >= 500 or status == 429 or error.get("Code") in _THROTTLING_CODES
    if isinstance(exc, botocore.exceptions.ConnectionError | botocore.exceptions.HTTPClientError):
        return True
    return isinstance(exc, ConnectionError | TimeoutError | httpx.TransportError)
