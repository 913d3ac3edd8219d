"""The ingestion state machine's inputs: every Task state's payload is a task model, and the models read it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from airies.core.config import PROJECT_ROOT
from airies.knowledge.ingestion import PreparedDocument
from airies.knowledge.tasks import (
    EmbedTask,
    FailTask,
    FinaliseTask,
    IngestionExecution,
    PrepareTask,
    parse_ingestion_task,
)

ASL = PROJECT_ROOT / "infra" / "statemachines" / "ingestion.asl.json"
MODELS = {"prepare": PrepareTask, "embed": EmbedTask, "finalise": FinaliseTask, "fail": FailTask}


def _payloads(states: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for state in states.values():
        if state["Type"] == "Task":
            yield state["Parameters"]["Payload"]
        if state["Type"] == "Map":
            yield from _payloads(state["ItemProcessor"]["States"])


def test_every_task_state_sends_exactly_the_fields_of_its_model() -> None:
    payloads = list(_payloads(json.loads(ASL.read_text())["States"]))
    assert sorted(p["task"] for p in payloads) == sorted(MODELS)
    for payload in payloads:
        fields = {key.removesuffix(".$") for key in payload}
        assert fields == set(MODELS[payload["task"]].model_fields), payload["task"]


def test_the_models_read_what_the_state_machine_passes() -> None:
    prepared = PreparedDocument("kdoc_1", chunk_count=70, batches=[{"document_id": "kdoc_1", "start": 64, "end": 70}])
    item = prepared.to_dict()["batches"][0]  # one Map item, as the Map hands it to EmbedBatch
    embed = parse_ingestion_task({"task": "embed", **item})
    assert embed == EmbedTask(task="embed", document_id="kdoc_1", start=64, end=70)
    fail = parse_ingestion_task(
        {"task": "fail", "document_id": "kdoc_1", "error": {"Error": "ProviderRejectedError", "Cause": "{}"}}
    )
    assert isinstance(fail, FailTask) and fail.error == {"Error": "ProviderRejectedError", "Cause": "{}"}
    assert parse_ingestion_task({"task": "prepare", "document_id": "kdoc_1", "etag": None}) == PrepareTask(
        task="prepare", document_id="kdoc_1"
    )
    # The execution's own input (what starts it) comes along to every state: a task ignores what it does not use.
    execution = IngestionExecution(document_id="kdoc_1", etag="abc")
    finalise = parse_ingestion_task({"task": "finalise", **execution.model_dump(), "result": {"prepared": {}}})
    assert finalise == FinaliseTask(task="finalise", document_id="kdoc_1", etag="abc")


@pytest.mark.parametrize(
    "payload",
    [
        {"task": "reindex", "document_id": "kdoc_1"},
        {"task": "embed", "document_id": "kdoc_1", "start": 0},
        {"task": "embed", "document_id": "kdoc_1", "start": -1, "end": 4},
        {"task": "prepare", "document_id": ""},
        {"document_id": "kdoc_1"},
    ],
)
def test_a_payload_that_is_no_task_is_refused(payload: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        parse_ingestion_task(payload)
