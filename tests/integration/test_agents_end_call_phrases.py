"""End-call phrases match the same way on a call as in an agent test (airies.core.text.contains_phrase)."""

from __future__ import annotations

import pytest

from tests.doubles.conv_engines import FakeLLM, fake_engines
from tests.integration.test_conv_handlers import Harness, aws, frames_of  # noqa: F401  (aws: a fixture)


@pytest.mark.usefixtures("aws")
def test_a_call_ends_on_an_underscored_end_call_phrase(database, settings) -> None:  # type: ignore[no-untyped-def]
    llm = FakeLLM()
    h = Harness(
        database,
        settings,
        fake_engines(llm=llm),
        first_message_mode="assistant_waits_for_user",
        end_call_phrases=["all done"],
    )
    cid, token = h.start()
    conn, _ = h.connect(cid, token)
    h.send(conn, {"action": "text", "text": "that is all_done"})
    frames = frames_of(conn)
    assert frames[-1]["type"] == "ended" and frames[-1]["reason"] == "caller_end_call_phrase"
    assert not llm.requests
