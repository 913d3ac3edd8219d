"""No database transaction stays open while a turn waits on its providers (PostgreSQL: ``pg_stat_activity``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from moto import mock_aws
from sqlalchemy import create_engine, text

from tests.conftest import PG_ADMIN_URL
from tests.doubles.conv_engines import FakeLLM, fake_engines
from tests.integration.test_conv_api import deployed_agent, engines, live_sessions, start  # noqa: F401
from tests.integration.test_conv_handlers import Harness

IDLE_IN_TRANSACTION = text(
    "SELECT count(*) FROM pg_stat_activity WHERE datname = :name AND state LIKE 'idle in transaction%'"
)


class PausedLLM:
    """The LLM double, held at its first token until released (the turn is then waiting on its provider)."""

    def __init__(self) -> None:
        self.waiting = threading.Event()
        self.release = threading.Event()

    def reply(self, _request: Any) -> str:
        self.waiting.set()
        assert self.release.wait(30), "the test never released the LLM"
        return "We open at nine."


def idle_in_transaction_while_paused(database: Any, paused: PausedLLM, turn: Callable[[], Any]) -> int:
    name = database.engine.url.database
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    worker = threading.Thread(target=turn)
    worker.start()
    try:
        assert paused.waiting.wait(30), "the turn never reached the LLM"
        with admin.connect() as conn:
            return int(conn.execute(IDLE_IN_TRANSACTION, {"name": name}).scalar_one())
    finally:
        paused.release.set()
        worker.join(30)
        admin.dispose()


# pg_stat_activity is PostgreSQL's: these run on PostgreSQL only (the database fixture's other backend is not
# collected, rather than skipped).
postgres_only = pytest.mark.parametrize("database", ["postgresql"], indirect=True)


@postgres_only
def test_a_live_turn_holds_no_transaction_while_the_llm_runs(database, settings) -> None:  # type: ignore[no-untyped-def]
    paused = PausedLLM()
    with mock_aws():
        h = Harness(
            database,
            settings,
            fake_engines(llm=FakeLLM(reply=paused.reply)),
            first_message_mode="assistant_waits_for_user",
        )
        cid, token = h.start()
        conn, _ = h.connect(cid, token)
        holding = idle_in_transaction_while_paused(
            database, paused, lambda: h.send(conn, {"action": "text", "text": "When do you open?"})
        )
        assert holding == 0
        (turn,) = h.turns(cid)  # and the turn was still stored afterwards
        assert turn.agent_text == "We open at nine."


@postgres_only
def test_a_rest_turn_holds_no_transaction_while_the_llm_runs(client, auth, app, database) -> None:  # type: ignore[no-untyped-def]
    paused = PausedLLM()
    app.state.conversation_engines = lambda config: fake_engines(llm=FakeLLM(reply=paused.reply))
    cid = start(client, auth, deployed_agent(client, auth))["id"]
    answers: list[Any] = []

    def turn() -> None:
        answers.append(client.post(f"/api/v1/conversations/{cid}/message", json={"text": "Hi"}, headers=auth))

    assert idle_in_transaction_while_paused(database, paused, turn) == 0
    assert answers[0].status_code == 200 and answers[0].json()["reply"] == "We open at nine."
