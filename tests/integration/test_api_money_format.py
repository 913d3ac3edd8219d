"""Money has one representation everywhere: a decimal string with a fixed scale (credits 6 decimals, USD 9), never a
JSON number and never an exponent; ``*_cents`` and ``*_micros`` are exact integers. Checked on the OpenAPI document
and on real responses of every route that carries money, REST and WebSocket frames alike."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from airies.billing.schemas import UsageEvent
from airies.billing.usage import UsageService
from airies.conversations import protocol as wp
from airies.conversations.live import ended_summary
from airies.conversations.models import Conversation
from airies.conversations.turns import price_usage
from airies.core.money import CREDIT_PATTERN, USD_PATTERN, format_usd
from tests.conftest import signup
from tests.doubles.conv_engines import FakeLLM, FakeSTT, FakeTTS, fake_engines

MONEY_WORDS = {"cost", "usd", "amount", "balance", "credit", "credits", "price", "overdraft", "available", "owed"}
MONEY_WORDS |= {"covered"}
INTEGER_UNITS = {"cents", "micros"}
MONEY_STRING = re.compile(f"{USD_PATTERN}|{CREDIT_PATTERN}")


def is_money_key(key: str) -> bool:
    words = key.lower().split("_")
    return bool(MONEY_WORDS & set(words)) or key.endswith("_per_mtok")


def money_problems(value: Any, path: str = "", money: bool = False) -> list[str]:
    """Every money leaf of a JSON document that is not a fixed-point string (or an integer of cents/micros)."""
    problems: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            unit = key.rsplit("_", 1)[-1]
            if unit in INTEGER_UNITS:
                if not (isinstance(item, int) and not isinstance(item, bool)):
                    problems.append(f"{path}.{key}={item!r} (an integer of the smallest unit)")
                continue
            problems += money_problems(item, f"{path}.{key}", money or is_money_key(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            problems += money_problems(item, f"{path}[{index}]", money)
    elif (
        money
        and value is not None
        and not isinstance(value, bool)
        and not (isinstance(value, str) and MONEY_STRING.fullmatch(value))
    ):
        problems.append(f"{path}={value!r}")
    return problems


def test_the_checker_finds_every_spelling_the_api_used_to_send() -> None:
    bad = {"cost_usd": 0.0, "usage": {"cost_usd": "2.4E-7"}, "totals": {"cost_usd": "0"}, "amount_cents": "12"}
    assert len(money_problems(bad)) == 4
    good = {"cost_usd": "0.000000240", "cost": {"llm": "0.000000000"}, "balance": "1.500000", "amount_cents": 12}
    assert money_problems(good) == []


def test_format_usd_is_fixed_point_and_refuses_floats() -> None:
    assert format_usd(Decimal("2.4E-7")) == "0.000000240"
    assert format_usd(Decimal("-0")) == "0.000000000" and format_usd(20) == "20.000000000"
    assert format_usd("0.0000000005") == "0.000000001"  # half-up at the nano-dollar
    with pytest.raises(TypeError):
        format_usd(0.1)  # type: ignore[arg-type]


def _schema_money_problems(schema: dict[str, Any], components: dict[str, Any], path: str, seen: set[str]) -> list:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name in seen:
            return []
        return _schema_money_problems(components[name], components, f"{path}<{name}>", seen | {name})
    problems = []
    for key in ("anyOf", "oneOf", "allOf"):
        for option in schema.get(key, []):
            problems += _schema_money_problems(option, components, path, seen)
    for name, sub in (schema.get("properties") or {}).items():
        where = f"{path}.{name}"
        unit = name.rsplit("_", 1)[-1]
        options = sub.get("anyOf", [sub])
        if unit in INTEGER_UNITS:
            if any(o.get("type") not in ("integer", "null") for o in options if "$ref" not in o):
                problems.append(f"{where}: an integer of the smallest unit")
        elif is_money_key(name) and not any("$ref" in o or o.get("type") == "object" for o in options):
            for option in options:
                if option.get("type") == "null":
                    continue
                if option.get("type") != "string" or option.get("pattern") not in (USD_PATTERN, CREDIT_PATTERN):
                    problems.append(f"{where}: {option}")
        problems += _schema_money_problems(sub, components, where, seen)
    if isinstance(schema.get("items"), dict):
        problems += _schema_money_problems(schema["items"], components, f"{path}[]", seen)
    if isinstance(schema.get("additionalProperties"), dict) and is_money_key(path.rsplit(".", 1)[-1]):
        extra = schema["additionalProperties"]
        if extra.get("type") != "string" or extra.get("pattern") not in (USD_PATTERN, CREDIT_PATTERN):
            problems.append(f"{path}.*: {extra}")
    return problems


def test_no_money_field_of_a_response_in_the_openapi_document_is_a_number(client) -> None:  # type: ignore[no-untyped-def]
    """Every response schema (requests may send an amount as a JSON number: it is parsed as a Decimal)."""
    doc = client.app.openapi()
    components = doc["components"]["schemas"]
    problems, responses = [], 0
    for route, operations in doc["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                for media in response.get("content", {}).values():
                    if status.startswith("2"):
                        responses += 1
                        problems += _schema_money_problems(media["schema"], components, f"{method} {route}", set())
    assert responses > 40 and problems == []
    money_fields = [f for s in components.values() for f in (s.get("properties") or {}) if is_money_key(f)]
    assert len(money_fields) >= 15  # the walk has money fields to check


@pytest.fixture
def engines(app):  # type: ignore[no-untyped-def]
    llm, stt, tts = FakeLLM(reply="We ship worldwide. Goodbye!"), FakeSTT(text="do you ship"), FakeTTS()
    app.state.conversation_engines = lambda config: fake_engines(stt=stt, llm=llm, tts=tts)


@pytest.fixture(autouse=True)
def live_sessions(app, settings):  # type: ignore[no-untyped-def]
    import uuid

    import boto3
    from moto import mock_aws

    from airies.conversations.live import WebSocketService
    from airies.conversations.sessions import SessionStore

    with mock_aws():
        store = SessionStore(boto3.client("dynamodb", region_name="us-east-1"), f"ws-{uuid.uuid4().hex[:6]}")
        store.ensure_table()
        app.state.live_sessions = WebSocketService(settings, app.state.database, store)
        yield


def test_every_response_that_carries_money_uses_the_one_format(client, database, engines) -> None:  # type: ignore[no-untyped-def]
    auth = signup(client)
    account = client.get("/api/v1/accounts/me", headers=auth).json()["id"]
    agent = {"name": "Support", "system_prompt": "You help.", "first_message": "Hi!"}
    agent_id = client.post("/api/v1/agents", json=agent, headers=auth).json()["id"]
    assert client.post(f"/api/v1/agents/{agent_id}/deploy", headers=auth).status_code == 201
    conversation = client.post("/api/v1/conversations", json={"agent_id": agent_id}, headers=auth).json()
    cid = conversation["id"]
    message = client.post(f"/api/v1/conversations/{cid}/message", json={"text": "do you ship?"}, headers=auth)
    assert message.status_code == 200, message.text
    # A tiny cost that used to be spelled with an exponent.
    UsageService(database).track_usage(
        [
            UsageEvent(
                idempotency_key="tiny:llm_cached_tokens",
                account_id=account,
                component="llm_cached_tokens",
                quantity=Decimal(4),
                provider="openai",
                model="gpt-4o-mini",
            )
        ]
    )
    responses = {
        "message": message.json(),
        "conversation": client.get(f"/api/v1/conversations/{cid}", headers=auth).json(),
        "conversations": client.get("/api/v1/conversations", headers=auth).json(),
        "cost": client.get(f"/api/v1/conversations/{cid}/cost", headers=auth).json(),
        "analytics": client.get("/api/v1/conversations/analytics", headers=auth).json(),
        "agent analytics": client.get(f"/api/v1/agents/{agent_id}/analytics", headers=auth).json(),
        "agent test": client.post(f"/api/v1/agents/{agent_id}/test", json={"message": "hi"}, headers=auth).json(),
        "usage events": client.get("/api/v1/usage/events", headers=auth).json(),
        "usage": client.get("/api/v1/usage", headers=auth).json(),
        "balance": client.get("/api/v1/billing/balance", headers=auth).json(),
        "ledger": client.get("/api/v1/billing/ledger", headers=auth).json(),
        "plans": client.get("/api/v1/billing/plans", headers=auth).json(),
        "models": client.get("/api/v1/llm/models", headers=auth).json(),
    }
    problems = {name: money_problems(body) for name, body in responses.items()}
    assert {name: found for name, found in problems.items() if found} == {}

    turn = responses["message"]["turn"]
    assert set(turn["cost"]) == {"stt", "llm", "tts", "total"} and re.fullmatch(USD_PATTERN, turn["cost_usd"])
    assert responses["conversation"]["cost_usd"] == turn["cost_usd"] != format_usd(0)
    cost = responses["cost"]
    assert all(re.fullmatch(USD_PATTERN, v) for v in [*cost["components"].values(), cost["total"]])
    assert cost["total"] == turn["cost_usd"]
    tiny = next(e for e in responses["usage events"]["data"] if e["idempotency_key"] == "tiny:llm_cached_tokens")
    assert tiny["cost_usd"] == "0.000000300"  # 4 tokens at $0.075 per million: no exponent
    assert responses["balance"]["currency_per_credit"] == "0.010000000"


def test_websocket_frames_carry_money_in_the_same_format(database) -> None:  # type: ignore[no-untyped-def]
    cost, total = price_usage(
        {"llm_provider": "openai", "llm_model": "gpt-4o-mini", "prompt_tokens": 3, "completion_tokens": 1}
    )
    frame = wp.turn_end("turn_1", seq=1, status="completed", cost=cost)
    assert money_problems(frame) == [] and frame["cost"]["total"] == format_usd(total) == "0.000001050"
    now = datetime.now(UTC)
    conversation = Conversation(
        id="conv_1", cost_usd=Decimal("2.4E-7"), duration_seconds=1.5, turn_count=1, started_at=now, created_at=now
    )
    ended = wp.ended("caller_ended", conversation_id="conv_1", **ended_summary(conversation))
    assert ended["cost_usd"] == "0.000000240" and money_problems(ended) == []
    assert ended_summary(None)["cost_usd"] == "0.000000000"
