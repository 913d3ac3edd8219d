"""Tenants' JSON Schemas: checked at save, applied to what an LLM wrote, never hanging on a pattern."""

from __future__ import annotations

import pytest

from airies.core.json_schemas import best_schema_error, check_object_schema, schema_errors


def object_with(**properties: object) -> dict[str, object]:
    return {"type": "object", "properties": properties}


def test_a_pattern_is_applied() -> None:
    schema = object_with(order_id={"type": "string", "pattern": "^A[0-9]+$"})
    assert schema_errors(schema, {"order_id": "A123"}) == []
    (error,) = schema_errors(schema, {"order_id": "B1"})
    assert list(error.path) == ["order_id"] and "does not match" in error.message


def test_a_catastrophic_pattern_fails_the_value_instead_of_hanging() -> None:
    # ^(a|aa)+$ against "aaaa...!" backtracks exponentially (in re and in regex): years on 40 characters.
    schema = object_with(code={"type": "string", "pattern": "^(a|aa)+$"})
    error = best_schema_error(schema, {"code": "a" * 40 + "!"})
    assert error is not None and "took too long" in error.message


def test_pattern_properties_and_broken_patterns_are_refused_when_saved() -> None:
    with pytest.raises(ValueError, match="patternProperties is not supported"):
        check_object_schema(
            {"type": "object", "patternProperties": {"^x": {"type": "string"}}}, name="parameters", max_bytes=8192
        )
    with pytest.raises(ValueError, match="properties/code/pattern: '\\(unclosed' is not a 'regex'"):
        check_object_schema(object_with(code={"type": "string", "pattern": "(unclosed"}), name="p", max_bytes=8192)
    with pytest.raises(ValueError, match="must be a JSON Schema of an object"):
        check_object_schema({"type": "string"}, name="parameters", max_bytes=8192)
    good = object_with(code={"type": "string", "pattern": "^[A-Z]{2}$"})
    assert check_object_schema(good, name="parameters", max_bytes=8192) is good
