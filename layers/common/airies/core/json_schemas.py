"""JSON Schemas an account supplies (tool parameters, post-call structured data): checked when the agent is saved,
applied to what an LLM wrote. One validator for both, so neither can hang on a tenant's pattern.

jsonschema applies ``pattern`` with Python's ``re``, which has no time limit: a pattern with catastrophic
backtracking (``(a+)+$``) against an LLM's string could hold a turn's thread for minutes. Here ``pattern`` runs on
the ``regex`` module with a timeout (a string that takes longer fails validation), and ``patternProperties``, whose
patterns jsonschema also applies to every key through ``re`` (in ``additionalProperties`` too), is refused at save.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError

PATTERN_TIMEOUT_S = 0.05
MAX_PATTERN_SUBJECT_CHARS = 10_000


def _pattern(validator: Any, pattern: str, instance: Any, schema: Mapping[str, Any]) -> Iterator[ValidationError]:
    import regex  # loaded with the validator (tenant_validator), like jsonschema
    from jsonschema.exceptions import ValidationError

    if not validator.is_type(instance, "string"):
        return
    try:
        found = regex.search(pattern, instance[:MAX_PATTERN_SUBJECT_CHARS], timeout=PATTERN_TIMEOUT_S)
    except TimeoutError:
        yield ValidationError(f"the pattern {pattern!r} took too long on this value")
        return
    except regex.error:
        yield ValidationError(f"{pattern!r} is not a pattern")
        return
    if found is None:
        yield ValidationError(f"{instance[:100]!r} does not match {pattern!r}")


@functools.cache
def tenant_validator() -> Any:
    """Draft 2020-12 with ``pattern`` bounded in time. jsonschema (and its referencing, attrs, rpds: ~55 ms) loads
    here, when a schema is first checked or applied, not at the cold start of every function importing agents."""
    from jsonschema import Draft202012Validator, validators

    return validators.extend(Draft202012Validator, {"pattern": _pattern})


def _refused_keyword(schema: Any, path: str = "") -> str | None:
    """Where a keyword this validator cannot bound appears (``patternProperties``), or a ``pattern`` that does not
    compile; None when there is none."""
    import regex  # only where an agent is saved

    if isinstance(schema, dict):
        for key, value in schema.items():
            where = f"{path}/{key}" if path else key
            if key == "patternProperties":
                return f"{where}: patternProperties is not supported (use properties)"
            if key == "pattern" and isinstance(value, str):
                try:
                    regex.compile(value)
                except regex.error as exc:
                    return f"{where}: not a valid pattern ({exc})"
            found = _refused_keyword(value, where)
            if found:
                return found
    elif isinstance(schema, list):
        for index, item in enumerate(schema):
            found = _refused_keyword(item, f"{path}/{index}")
            if found:
                return found
    return None


def check_object_schema(value: dict[str, Any], *, name: str, max_bytes: int) -> dict[str, Any]:
    """A JSON Schema the account supplies for a JSON object: valid (draft 2020-12), of an object, at most
    ``max_bytes`` as JSON, nothing the validator cannot bound; a ``ValueError`` says which rule it breaks."""
    from jsonschema.exceptions import SchemaError  # loaded with the validator (tenant_validator)

    if len(json.dumps(value, default=str)) > max_bytes:
        raise ValueError(f"{name} may be at most {max_bytes // 1024} KiB as JSON")
    try:
        tenant_validator().check_schema(value)
    except SchemaError as exc:
        where = "/".join(str(part) for part in exc.path) or "(root)"
        raise ValueError(f"not a valid JSON Schema at {where}: {exc.message}") from None
    if value.get("type") != "object":
        raise ValueError(f'{name} must be a JSON Schema of an object ("type": "object")')
    refused = _refused_keyword(value)
    if refused:
        raise ValueError(refused)
    return value


def schema_errors(schema: Mapping[str, Any], instance: Any) -> list[ValidationError]:
    """Every way ``instance`` breaks ``schema``, in path order (``pattern`` bounded in time)."""
    return sorted(tenant_validator()(schema).iter_errors(instance), key=lambda e: str(list(e.path)))


def best_schema_error(schema: Mapping[str, Any], instance: Any) -> ValidationError | None:
    """The most relevant way ``instance`` breaks ``schema`` (jsonschema's ``best_match``), or None."""
    from jsonschema.exceptions import best_match  # loaded with the validator (tenant_validator)

    error: ValidationError | None = best_match(tenant_validator()(schema).iter_errors(instance))
    return error
