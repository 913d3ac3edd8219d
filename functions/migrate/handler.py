"""MigrateFunction: ``alembic upgrade head`` from inside the VPC, so no laptop has to reach the database.

Two ways in:

* the stack's ``DatabaseMigrations`` custom resource: CloudFormation sends Create/Update/Delete and waits for the
  answer PUT to the request's presigned ``ResponseURL``. Create and Update migrate; Delete leaves schema and data
  alone. The answer always goes out, on failure and before this function's own timeout too, so a failed migration
  fails (and rolls back) the deployment instead of leaving CloudFormation waiting;
* a direct invocation (``make migrate STAGE=...``) with ``{"action": "upgrade"}``: migrates and returns the result.

A database already at a revision this code does not know (a rollback to older code after a newer migration ran) is
left as it is: migrations only move forward, and the older code must keep working on the newer schema.
"""

from __future__ import annotations

from airies.core import bootstrap

bootstrap.pause_collector_for_init()  # before the imports (airies.core.bootstrap says why)

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Annotated, Any, Literal

from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from aws_lambda_powertools.utilities.parser.models import (
    CloudFormationCustomResourceCreateModel,
    CloudFormationCustomResourceDeleteModel,
    CloudFormationCustomResourceUpdateModel,
)
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from airies.core.config import get_settings
from airies.core.database import create_db_engine, database_ssl_context
from airies.core.events import parse_event
from airies.core.observability import lambda_handler, logger
from airies.migrations.runner import alembic_config, upgrade_head

PHYSICAL_ID = "airies-database-migrations"  # one resource for the stack's life: never replaced
# Answer CloudFormation this long before the function would be killed mid-migration.
ANSWER_MARGIN_MS = 20_000
_pool = ThreadPoolExecutor(max_workers=1)


class UpgradeRequest(BaseModel):
    """A direct invocation (``make migrate``)."""

    model_config = ConfigDict(extra="forbid")  # an event of any other shape must not pass for this one
    action: Literal["upgrade"] = "upgrade"


CustomResourceEvent = Annotated[
    CloudFormationCustomResourceCreateModel
    | CloudFormationCustomResourceUpdateModel
    | CloudFormationCustomResourceDeleteModel,
    Field(discriminator="request_type"),
]
MigrateEvent = CustomResourceEvent | UpgradeRequest
EVENTS: TypeAdapter[MigrateEvent] = TypeAdapter(MigrateEvent)


def current_revision(url: str) -> str | None:
    engine = create_db_engine(url, ssl_context=database_ssl_context(get_settings()))
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def migrate(url: str) -> dict[str, Any]:
    """Upgrade to this code's head, unless the database is at a revision this code does not know."""
    script = ScriptDirectory.from_config(alembic_config(url))
    head = script.get_current_head()
    before = current_revision(url)
    if before is not None:
        try:
            script.get_revision(before)
        except CommandError:
            logger.warning("database is ahead of this code; left as is", extra={"revision": before, "head": head})
            return {"status": "ahead", "revision": before, "head": head}
    if before == head:
        return {"status": "at_head", "revision": head, "previous": before}
    upgrade_head(url)
    after = current_revision(url)
    logger.info("database migrated", extra={"previous": before, "revision": after})
    return {"status": "upgraded", "revision": after, "previous": before}


def send_response(event: CustomResourceEvent, status: str, reason: str, data: dict[str, Any]) -> None:
    body = json.dumps(
        {
            "Status": status,
            "Reason": reason[:3000],
            "PhysicalResourceId": getattr(event, "physical_resource_id", None) or PHYSICAL_ID,
            "StackId": event.stack_id,
            "RequestId": event.request_id,
            "LogicalResourceId": event.logical_resource_id,
            "Data": {key: str(value) for key, value in data.items()},
        }
    ).encode()
    # The presigned URL signs no content type: send an empty one.
    request = urllib.request.Request(
        str(event.response_url),
        data=body,
        method="PUT",
        headers={"Content-Type": "", "Content-Length": str(len(body))},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


def handle_custom_resource(event: CustomResourceEvent, context: Any) -> dict[str, Any]:
    if isinstance(event, CloudFormationCustomResourceDeleteModel):  # removing the stack never drops a table
        send_response(event, "SUCCESS", "schema and data left in place", {})
        return {"status": "kept"}
    budget_s = max(0.0, (context.get_remaining_time_in_millis() - ANSWER_MARGIN_MS) / 1000)
    try:
        url = get_settings().resolved_database_url()
        result = _pool.submit(migrate, url).result(timeout=budget_s)
    except FutureTimeout:
        send_response(event, "FAILED", "the migration did not finish before the function's timeout", {})
        return {"status": "timed_out"}
    except Exception as exc:
        logger.exception("migration failed")
        send_response(event, "FAILED", f"migration failed: {type(exc).__name__}: {exc}", {})
        return {"status": "failed"}
    send_response(event, "SUCCESS", f"database {result['status']} at {result['revision']}", result)
    return result


@lambda_handler
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    request = parse_event(EVENTS, event, source="migration")
    if isinstance(request, UpgradeRequest):
        return migrate(get_settings().resolved_database_url())
    return handle_custom_resource(request, context)


bootstrap.init_done()  # the module's last statement: its init is over
