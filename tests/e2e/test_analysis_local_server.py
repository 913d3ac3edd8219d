"""``make run`` runs the post-call analysis: an ended conversation's analysis (offline responder: no keys) is
stored by the local stack's worker thread and returned by GET /conversations/{id}."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import jsonschema
import pytest

from tests.local_stack import local_server

pytestmark = pytest.mark.slow
KEY = "ak_live_analysis_e2e_key_0123456789abcdefghij"
SCHEMA = {"type": "object", "properties": {"topic": {"type": "string"}, "callback": {"type": "boolean"}}}


def test_an_ended_call_is_analysed_in_the_local_stack(tmp_path: Path) -> None:
    with local_server(tmp_path, KEY) as server:
        api = f"{server.base}/api/v1"
        auth = {"Authorization": f"Bearer {KEY}"}
        agent = httpx.post(
            f"{api}/agents",
            json={
                "name": "Analysed",
                "first_message": "Hello!",
                "analysis": {
                    "structured_data": {"enabled": True, "json_schema": SCHEMA},
                    "success_evaluation": {"enabled": True, "rubric": "pass_fail"},
                },
            },
            headers=auth,
        )
        assert agent.status_code == 201, agent.text
        agent_id = agent.json()["id"]
        assert httpx.post(f"{api}/agents/{agent_id}/deploy", headers=auth).status_code == 201
        cid = httpx.post(f"{api}/conversations", json={"agent_id": agent_id, "channel": "http"}, headers=auth).json()[
            "id"
        ]
        turn = httpx.post(f"{api}/conversations/{cid}/message", json={"text": "Can you call me back?"}, headers=auth)
        assert turn.status_code == 200, turn.text
        ended = httpx.put(f"{api}/conversations/{cid}", json={"status": "ended"}, headers=auth)
        assert ended.status_code == 200 and ended.json()["status"] == "ended"
        deadline = time.monotonic() + 30
        while True:
            body = httpx.get(f"{api}/conversations/{cid}", headers=auth).json()
            if body["analysis_status"] not in ("pending", None) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert body["analysis_status"] == "completed", (body, server.log.read_text()[-3000:])
        analysis = body["analysis"]
        assert analysis["offline"] is True and 'The caller first said: "Can you call me back?"' in analysis["summary"]
        jsonschema.validate(analysis["structured_data"], SCHEMA)
        assert analysis["success_evaluation"] == {"rubric": "pass_fail", "success": False, "reason": "example"}
