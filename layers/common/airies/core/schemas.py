from __future__ import annotations

import json
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

T = TypeVar("T")

# Every integer the API accepts is bounded, so none can overflow a column or a driver (SQLite and PostgreSQL hold at
# most a signed 64-bit integer; an INTEGER column on PostgreSQL a signed 32-bit one). Request models and query or
# path parameters use these types (or a domain range of their own, which is always narrower); a test walks the
# OpenAPI document so that a new integer input without both bounds fails.
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1

Version = Annotated[int, Field(ge=1, le=INT32_MAX, description="a published version number (1, 2, ...)")]
Offset = Annotated[int, Field(ge=0, le=INT32_MAX, description="rows to skip (at most 2^31 - 1)")]
# Routes narrow the largest page with ``Query(le=...)``; no list serves more than MAX_PAGE_SIZE rows at once.
MAX_PAGE_SIZE = 500
Limit = Annotated[int, Field(ge=1, le=MAX_PAGE_SIZE, description="rows per page")]
# A declared size in bytes: 1 TiB is far above any upload limit (checked by the route) and far below 2^63.
MAX_DECLARED_BYTES = 2**40
ByteSize = Annotated[int, Field(ge=1, le=MAX_DECLARED_BYTES, description="a size in bytes (at most 1 TiB)")]

METADATA_MAX_KEYS = 50
METADATA_MAX_BYTES = 16_384


def check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    """The one limit of a client's free-form metadata: on create, and on the merged result of an update. Its numbers
    must be JSON numbers (NaN and infinities are not; PostgreSQL refuses them in a JSON column)."""
    try:
        size = len(json.dumps(value, default=str, allow_nan=False))
    except ValueError as exc:
        raise ValueError("metadata numbers must be finite (NaN and Infinity are not JSON)") from exc
    if len(value) > METADATA_MAX_KEYS or size > METADATA_MAX_BYTES:
        raise ValueError(
            f"metadata may hold at most {METADATA_MAX_KEYS} keys and {METADATA_MAX_BYTES // 1024} KiB as JSON"
        )
    return value


Metadata = Annotated[dict[str, Any], AfterValidator(check_metadata)]


class StrictModel(BaseModel):
    """Request models: unknown fields are an error, never silently dropped; floats are finite (NaN and infinities
    are not JSON numbers and PostgreSQL refuses them in JSON columns)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, allow_inf_nan=False)


class Page(BaseModel, Generic[T]):
    data: list[T]
    next_cursor: str | None = None
    has_more: bool = False


class Problem(BaseModel):
    """One validation problem of a config, tied to a field path."""

    field: str
    code: str
    message: str


class ErrorInfo(BaseModel):
    code: str = Field(description="a stable machine-readable code, e.g. not_found, validation_failed")
    message: str = Field(description="what went wrong, for people")
    details: Any = Field(None, description="more about the error (for validation: a list of {field, code, message})")


class ErrorResponse(BaseModel):
    """The body of every 4xx and 5xx answer of the API (``airies.core.errors.error_body``)."""

    error: ErrorInfo


BINARY = {"type": "string", "format": "binary"}


def request_body(content: dict[str, dict[str, Any]], description: str, *, required: bool = True) -> dict[str, Any]:
    """``openapi_extra`` of a route that reads its body itself (uploads, signed payloads): the OpenAPI request body
    FastAPI cannot infer. ``content`` maps media types to schemas (``BINARY`` for raw bytes)."""
    return {
        "requestBody": {
            "required": required,
            "description": description,
            "content": {media: {"schema": schema} for media, schema in content.items()},
        }
    }
