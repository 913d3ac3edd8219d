"""Parsing a Lambda event at the edge: the event as a pydantic model (Powertools Parser models for AWS sources,
our own for state-machine task inputs), or one clear logged error.

A malformed event is never retried into a crash loop: the handler answers it (4xx for API Gateway, a partial batch
failure for one SQS record) or, for a state machine task, raises :class:`MalformedEvent`, which Step Functions sees
as the error name ``MalformedEvent`` (no retry matches it).
"""

from __future__ import annotations

from typing import Any, TypeVar, overload

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from airies.core.observability import logger

B = TypeVar("B", bound=BaseModel)
T = TypeVar("T")


class MalformedEvent(ValueError):
    """The event does not have the shape its source promises."""

    def __init__(self, source: str, errors: list[dict[str, Any]]) -> None:
        self.source = source
        self.errors = errors
        summary = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(event)'}: {e['msg']}" for e in errors[:5])
        super().__init__(f"malformed {source} event: {summary}")


class AnyObject(BaseModel):
    """An event whose content the handler does not read (a schedule's tick): it only has to be a JSON object."""

    model_config = ConfigDict(extra="allow")


@overload
def parse_event(model: type[B], event: object, *, source: str | None = None) -> B: ...


@overload
def parse_event(model: TypeAdapter[T], event: object, *, source: str) -> T: ...


def parse_event(model: type[BaseModel] | TypeAdapter[Any], event: object, *, source: str | None = None) -> Any:
    """``event`` validated as ``model`` (a model class, or a TypeAdapter of a union of them). On failure the
    validation errors (locations and messages, never the event's values: they may hold secrets) are logged and
    :class:`MalformedEvent` is raised."""
    name = source or str(getattr(model, "__name__", "Lambda"))
    try:
        if isinstance(model, TypeAdapter):
            return model.validate_python(event)
        return model.model_validate(event)
    except ValidationError as exc:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        logger.error("malformed event", extra={"source": name, "errors": errors})
        raise MalformedEvent(name, errors) from None
