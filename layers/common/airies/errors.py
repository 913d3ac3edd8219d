"""Errors every layer raises; the HTTP and WebSocket edges turn them into JSON.

Wire shape: ``{"error": {"code": str, "message": str, "details": Any}}``.
"""

from __future__ import annotations

from typing import Any


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
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


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
