"""An inline document processed in the API counts in DocumentsIngested / DocumentsFailed like one processed by the
ingestion functions: ApiFunction's handler, invoked as Lambda would, prints them in its EMF document."""

from __future__ import annotations

import base64
import copy
import json
import uuid
from pathlib import Path
from typing import Any

from moto import mock_aws

from airies.accounts.service import AccountService
from airies.core.config import PROJECT_ROOT
from airies.knowledge.service import build_knowledge_service
from airies.local.invoke import invoke_function, patched_environ, resolve_function
from airies.local.template import create_local_resources, function_environment

SAMPLE = json.loads((Path(PROJECT_ROOT) / "infra/events/ApiFunction.list-agents.json").read_text())


def post(path: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
    event = copy.deepcopy(SAMPLE)
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event["requestContext"]["http"]["method"] = "POST"
    event["rawQueryString"], event["queryStringParameters"] = "", None
    event["pathParameters"] = {"proxy": path.removeprefix("/api/v1/")}
    event["headers"] = {**event["headers"], "authorization": f"Bearer {key}", "content-type": "application/json"}
    event["body"] = json.dumps(body)
    return event


def emitted(out: str, name: str) -> float:
    total = 0.0
    for line in out.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            value = json.loads(line).get(name, 0)
            total += sum(value) if isinstance(value, list) else value
    return total


def test_an_inline_upload_in_the_api_counts_its_document_outcome(database, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    spec, ctx = resolve_function("ApiFunction")
    env = {**function_environment(spec, ctx), "DATABASE_URL": database.url}
    with mock_aws(), patched_environ(env):
        create_local_resources(ctx)
        with database.session() as session:
            account, issued = AccountService(session).signup(name="Co", email=f"{uuid.uuid4().hex[:8]}@ex.com")
            account_id, key = account.id, issued.raw_key
        kb = build_knowledge_service(database=database).create_knowledge_base(account_id, "Manuals")
        path = f"/api/v1/knowledge-bases/{kb.id}/documents"
        capsys.readouterr()
        good = invoke_function("ApiFunction", post(path, key, {"filename": "faq.md", "text": "# Hours\nNine to six."}))
        bad_pdf = base64.b64encode(b"%PDF-1.7 not really a pdf").decode()
        bad = invoke_function("ApiFunction", post(path, key, {"filename": "broken.pdf", "content_base64": bad_pdf}))
        out = capsys.readouterr().out
    assert good["statusCode"] == 201 and json.loads(good["body"])["document"]["status"] == "ready"
    assert bad["statusCode"] == 201 and json.loads(bad["body"])["document"]["status"] == "failed"
    assert emitted(out, "DocumentsIngested") == 1 and emitted(out, "DocumentsFailed") == 1
