"""The sweeper at scale: its DynamoDB reads grow with live sessions, not with the table.

Each size (live sessions, stale items) gets a fresh moto table built from template.yaml's ``VoiceStateTable``
(``airies.local.template``, as the local stack builds it, sparse ``live-sessions`` index included) and a fresh
SQLite database. Seeded:

* ``live`` live sessions, each with its active conversation row: the first opened by ``SessionStore.open_session``
  (the code the ``$connect`` route runs), the others copies of its session and connection items with their own
  keys, index shard and deadline; half of them due (``sweep_at`` in the past), half not (a deadline ahead). A due
  session had recent activity, so the sweeper only looks at it and writes its next deadline back.
* ``stale`` items the sweeper must never read: ended sessions (no ``live_shard``/``sweep_at``) and old caller
  audio chunks (``chunk_bytes`` each, 8,000 = 250 ms of 16 kHz PCM16), nine chunks per ended session.

Then the real sweeper path runs once (``LiveSessions.sweep``, as ``functions/sweeper/handler.py`` calls it).
A botocore hook on the sweeper's DynamoDB client counts every call, the items each response returned and their
read units by DynamoDB's rules (Query: the returned items' total size rounded up to 4 KB, half for eventually
consistent reads; GetItem/BatchGetItem: each item rounded up to 4 KB). The criterion is items and read units,
not time: read(live, stale) / read(live, 0) must stay ~1. Wall time is printed as information only (moto's own
Query walks every item of the table, which DynamoDB's index does not). For comparison, the read units of one
full-table Scan (what the sweeper did before the index) are computed from the stored items' sizes.

Sizes: ``BENCH_SWEEPER_SIZES`` (``live x stale`` pairs, comma-separated; default
``50x0,50x50000,500x0,500x50000``), e.g. ``BENCH_SWEEPER_SIZES=5000x0,5000x500000 python -m benchmarks sweeper``,
or ``python -m benchmarks.bench_sweeper --sizes 5000x500000``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from airies.conversations.sessions import CONFIG_SK, live_shard
from benchmarks import harness

DEFAULT_SIZES = "50x0,50x50000,500x0,500x50000"
CHUNK_BYTES = 8000  # 250 ms of 16 kHz PCM16, as the client streams it
CHUNKS_PER_ENDED_SESSION = 9
FLAT_LIMIT = 1.05  # read(live, stale) / read(live, 0)
READ_OPERATIONS = {"Query", "Scan", "GetItem", "BatchGetItem"}
WRITE_OPERATIONS = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem"}


# -- DynamoDB accounting ----------------------------------------------------------------------------------------


def read_units(items: list[dict[str, Any]], *, consistent: bool, one_read: bool) -> float:
    """Read units of a response. ``one_read``: a Query/Scan page, billed on the items' total size (at least one
    4 KB unit); otherwise every item is billed on its own (GetItem, BatchGetItem)."""
    sizes = [harness.item_bytes(item) for item in items]
    units = max(1, math.ceil(sum(sizes) / 4096)) if one_read else sum(max(1, math.ceil(s / 4096)) for s in sizes)
    return units if consistent else units / 2


@dataclass
class Counter:
    """Every DynamoDB call made through one client: per operation, calls, items returned and read units."""

    calls: dict[str, int] = field(default_factory=dict)
    items: dict[str, int] = field(default_factory=dict)
    units: dict[str, float] = field(default_factory=dict)

    def record(self, operation: str, params: dict[str, Any], response: dict[str, Any]) -> None:
        self.calls[operation] = self.calls.get(operation, 0) + 1
        if operation in ("Query", "Scan"):
            items = response.get("Items", [])
            units = read_units(items, consistent=bool(params.get("ConsistentRead")), one_read=True)
        elif operation == "GetItem":
            items = [response["Item"]] if "Item" in response else []
            units = read_units(items, consistent=bool(params.get("ConsistentRead")), one_read=False)
        elif operation == "BatchGetItem":
            items, units = [], 0.0
            for table, found in response.get("Responses", {}).items():
                consistent = bool(params["RequestItems"].get(table, {}).get("ConsistentRead"))
                items += found
                units += read_units(found, consistent=consistent, one_read=False)
        else:
            return
        self.items[operation] = self.items.get(operation, 0) + len(items)
        self.units[operation] = self.units.get(operation, 0.0) + units

    @property
    def items_read(self) -> int:
        return sum(self.items.values())

    @property
    def read_units(self) -> float:
        return sum(self.units.values())

    @property
    def read_calls(self) -> int:
        return sum(n for op, n in self.calls.items() if op in READ_OPERATIONS)

    @property
    def write_calls(self) -> int:
        return sum(n for op, n in self.calls.items() if op in WRITE_OPERATIONS)


@contextmanager
def counting(client: Any) -> Iterator[Counter]:
    """Count the DynamoDB calls made through ``client`` while the block runs (botocore event hooks: the request's
    parameters are kept in the call's context, read back with the parsed response)."""
    counter = Counter()

    def keep_params(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["bench_params"] = dict(params)

    def after(parsed: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        counter.record(model.name, context.get("bench_params", {}), parsed)

    events = client.meta.events
    events.register("before-parameter-build.dynamodb", keep_params, unique_id="bench-sweeper-params")
    events.register("after-call.dynamodb", after, unique_id="bench-sweeper-after")
    try:
        yield counter
    finally:
        events.unregister("before-parameter-build.dynamodb", unique_id="bench-sweeper-params")
        events.unregister("after-call.dynamodb", unique_id="bench-sweeper-after")


# -- one size ---------------------------------------------------------------------------------------------------


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.replace(" ", "").split(","):
        if part:
            live, stale = part.lower().split("x")
            sizes.append((int(live.replace("_", "")), int(stale.replace("_", ""))))
    return sizes


def _live_items(
    ids: list[str], session: dict[str, Any], config: dict[str, Any], connection: dict[str, Any], now: float
) -> Iterator[dict[str, Any]]:
    """Copies of a live session item, its config item and its connection item; every other one due (the first
    copied is not)."""
    for n, cid in enumerate(ids, start=1):
        conn = f"conn{n:08d}="
        yield {
            **session,
            "pk": {"S": f"conv#{cid}"},
            "conns": {"SS": [conn]},
            "live_shard": {"S": live_shard(cid)},
            "sweep_at": {"N": repr(now - 5 if n % 2 == 0 else now + 600)},
        }
        yield {**config, "pk": {"S": f"conv#{cid}"}}
        yield {**connection, "pk": {"S": f"conn#{conn}"}, "conversation_id": {"S": cid}}


def _stale_items(stale: int, now: float, chunk_bytes: int) -> Iterator[dict[str, Any]]:
    """Ended sessions (without the index keys) and the audio chunks their calls left behind."""
    pcm = bytes(chunk_bytes)
    per = CHUNKS_PER_ENDED_SESSION + 1
    for n in range(stale):
        cid = f"conv_old_{n // per:08d}"
        if n % per == 0:
            yield {
                "pk": {"S": f"conv#{cid}"},
                "sk": {"S": "session"},
                "state": {"S": "ended"},
                "end_reason": {"S": "silence_timeout"},
                "account_id": {"S": "acc_bench"},
                "started_at": {"N": repr(now - 3600)},
                "last_activity": {"N": repr(now - 3000)},
                "ttl": {"N": str(int(now) + 3600)},
            }
        else:
            yield {
                "pk": {"S": f"conv#{cid}"},
                "sk": {"S": f"chunk#{n % per:09d}"},
                "data": {"B": pcm},
                "ttl": {"N": str(int(now) + 300)},
            }


def _batch_write(client: Any, table: str, items: Iterator[dict[str, Any]]) -> tuple[int, int]:
    """Write items 25 at a time; returns (items, bytes)."""
    count = size = 0
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        request = {table: [{"PutRequest": {"Item": item}} for item in batch]}
        while request:
            request = client.batch_write_item(RequestItems=request).get("UnprocessedItems") or {}
        batch.clear()

    for item in items:
        batch.append(item)
        count += 1
        size += harness.item_bytes(item)
        if len(batch) == 25:
            flush()
    if batch:
        flush()
    return count, size


def measure(live: int, stale: int, *, chunk_bytes: int = CHUNK_BYTES) -> dict[str, Any]:
    """Seed one table and database, run the sweeper once; its DynamoDB reads, writes and wall time."""
    import boto3
    from moto import mock_aws
    from sqlalchemy import insert, select

    from airies.accounts.service import AccountService
    from airies.agents.schemas import AgentCreate
    from airies.agents.service import AgentService
    from airies.conversations.live import WebSocketService
    from airies.conversations.schemas import ConversationCreate
    from airies.conversations.service import ConversationService, ConversationTokens
    from airies.conversations.sessions import SessionStore
    from airies.core.config import Settings
    from airies.core.database import Database
    from airies.core.models import Base
    from airies.local.template import RESOURCE_KINDS, LocalContext, load_template
    from airies.migrations.runner import upgrade_head

    for name, value in (
        ("AWS_ACCESS_KEY_ID", "bench"),
        ("AWS_SECRET_ACCESS_KEY", "bench"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("POWERTOOLS_TRACE_DISABLED", "true"),
        ("POWERTOOLS_LOG_LEVEL", "WARNING"),
    ):
        os.environ.setdefault(name, value)
    tmp = tempfile.mkdtemp(prefix="bench-sweeper-")
    url = f"sqlite:///{tmp}/bench.db"
    upgrade_head(url)
    database = Database(url, pool_size=2)
    conversation_rows = Base.metadata.tables["conversations"]  # bulk insert of the live calls' rows
    now = 1_800_000_000.0
    clock = lambda: now  # noqa: E731 - the sweeper and the store see one fixed instant
    with mock_aws():
        ctx = LocalContext(load_template())
        resource = ctx.resources["VoiceStateTable"]
        session = boto3.session.Session(region_name=ctx.region)
        create_table = RESOURCE_KINDS[resource["Type"]].create
        assert create_table is not None
        create_table(ctx, "VoiceStateTable", resource, session)
        table = ctx.local_name("VoiceStateTable")
        index = resource["Properties"]["GlobalSecondaryIndexes"][0]["IndexName"]
        settings = Settings(
            stage="local",
            data_dir=tmp,
            ws_token_secret="b" * 32,
            ws_state_table=table,
            ws_sessions_index=index,
            ws_management_url="https://bench.execute-api.us-east-1.amazonaws.com/prod",
        )
        client = session.client("dynamodb", region_name=ctx.region)
        store = SessionStore(
            client,
            table,
            ttl_seconds=settings.ws_state_ttl_seconds,
            chunk_ttl_seconds=settings.ws_audio_chunk_ttl_seconds,
            index=index,
            resume_window_s=settings.ws_resume_window_seconds,
            clock=clock,
        )
        tokens = ConversationTokens(b"b" * 32)

        # One real conversation start gives the rows and the agent config every live session copies.
        with database.session() as s:
            account, _ = AccountService(s).signup(name="Bench", email=f"bench-{uuid.uuid4().hex[:8]}@example.com")
            agents = AgentService(s)
            agent = agents.create(account.id, AgentCreate(name="Bench", first_message_mode="assistant_waits_for_user"))
            agents.deploy(account.id, agent.id)
            conversations = ConversationService(s, settings, tokens=tokens)
            first, _, _ = conversations.start_conversation(account.id, ConversationCreate(agent_id=agent.id))
            config = conversations.config_for(first).model_dump(mode="json")
            row = s.execute(select(conversation_rows).where(conversation_rows.c.id == first.id)).mappings().one()
        ids = [f"conv_live_{n:08d}" for n in range(live)]
        with database.session() as s:
            if ids:
                s.execute(insert(conversation_rows), [{**row, "id": cid, "status": "active"} for cid in ids])
                s.commit()
        seed_started = time.perf_counter()
        # The first live session is opened by the $connect code; the others are copies of its item (moto applies
        # an update expression slowly, a put quickly), each with its own keys, index shard, deadline, connection.
        sample: dict[str, Any] = {}
        sample_config: dict[str, Any] = {}
        if ids:
            store.open_session(
                ids[0],
                account_id=account.id,
                agent_id=agent.id,
                agent_version=row["agent_version"],
                config=config,
                connection_id="conn00000000=",
                endpoint=None,
                first_deadline=now - 5,
            )
            sample = client.get_item(TableName=table, Key=store._key(ids[0]))["Item"]
            sample_config = client.get_item(TableName=table, Key=store._key(ids[0], CONFIG_SK))["Item"]
            connection = client.get_item(TableName=table, Key={"pk": {"S": "conn#conn00000000="}, "sk": {"S": "conn"}})
        due = (live + 1) // 2  # every other session, the first included
        copies = _live_items(ids[1:], sample, sample_config, connection.get("Item", {}) if ids else {}, now)
        _batch_write(client, table, copies)
        stale_count, stale_bytes = _batch_write(client, table, _stale_items(stale, now, chunk_bytes))
        seed_s = time.perf_counter() - seed_started
        session_bytes = harness.item_bytes(sample)

        service = WebSocketService(settings, database, store, tokens=tokens, clock=clock)
        with counting(client) as counter:
            started = time.perf_counter()
            actions = service.sweep()
            sweep_s = time.perf_counter() - started
    database.dispose()
    # What one full-table Scan reads: every item (live sessions, their connection items, the stale ones).
    table_items = 3 * live + stale_count  # per live call: its session, config and connection items
    scan_bytes = live * (session_bytes + harness.item_bytes(sample_config) + 120) + stale_bytes
    return {
        "live": live,
        "stale": stale,
        "due": due,
        "table_items": table_items,
        "items_read": counter.items_read,
        "read_units": counter.read_units,
        "read_calls": counter.read_calls,
        "write_calls": counter.write_calls,
        "calls": counter.calls,
        "items_by_operation": counter.items,
        "units_by_operation": counter.units,
        "actions": actions,
        "session_item_bytes": session_bytes,
        "full_scan_read_units_estimate": max(1, math.ceil(scan_bytes / 4096)) / 2,
        "sweep_s": round(sweep_s, 3),
        "seed_s": round(seed_s, 1),
    }


# -- the benchmark ----------------------------------------------------------------------------------------------


def flatness(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each live size measured with and without stale items: read(live, most stale) / read(live, 0)."""
    ratios = []
    for live in sorted({r["live"] for r in results}):
        rows = sorted((r for r in results if r["live"] == live), key=lambda r: r["stale"])
        if len(rows) > 1 and rows[0]["stale"] == 0:
            base, big = rows[0], rows[-1]
            ratios.append(
                {
                    "live": live,
                    "stale": big["stale"],
                    "items_read_ratio": big["items_read"] / max(1, base["items_read"]),
                    "read_units_ratio": big["read_units"] / max(1.0, base["read_units"]),
                }
            )
    return ratios


def run(args: Any = None) -> dict[str, Any]:
    sys.path.insert(0, str(harness.ROOT))
    sizes = parse_sizes(os.environ.get("BENCH_SWEEPER_SIZES") or DEFAULT_SIZES)
    chunk_bytes = int(os.environ.get("BENCH_SWEEPER_CHUNK_BYTES") or CHUNK_BYTES)
    results = []
    print(
        f"  {'live':>6} {'stale':>8} {'due':>5} {'items read':>10} {'read units':>10} {'reads':>6} {'writes':>6}"
        f" {'scan would read (units)':>24} {'sweep s':>8} {'seed s':>7}"
    )
    for live, stale in sizes:
        r = measure(live, stale, chunk_bytes=chunk_bytes)
        results.append(r)
        print(
            f"  {live:>6} {stale:>8} {r['due']:>5} {r['items_read']:>10} {r['read_units']:>10.1f}"
            f" {r['read_calls']:>6} {r['write_calls']:>6} {r['full_scan_read_units_estimate']:>24.1f}"
            f" {r['sweep_s']:>8.2f} {r['seed_s']:>7.1f}",
            flush=True,
        )
    ratios = flatness(results)
    for ratio in ratios:
        print(
            f"  live {ratio['live']}: read({ratio['live']}, {ratio['stale']}) / read({ratio['live']}, 0) ="
            f" {ratio['items_read_ratio']:.3f} items, {ratio['read_units_ratio']:.3f} units"
        )
    return {
        "sizes": [f"{live}x{stale}" for live, stale in sizes],
        "chunk_bytes": chunk_bytes,
        "results": results,
        "flatness": ratios,
        "targets": [
            harness.target(
                f"sweeper read units, {r['live']} live: with {r['stale']} stale / with none",
                r["read_units_ratio"],
                FLAT_LIMIT,
                "x",
            )
            for r in ratios
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_sweeper")
    parser.add_argument("--sizes", default=None, help=f"live x stale pairs (default {DEFAULT_SIZES})")
    parser.add_argument("--chunk-bytes", type=int, default=None, help=f"stale audio chunk size (default {CHUNK_BYTES})")
    args = parser.parse_args(argv)
    if args.sizes:
        os.environ["BENCH_SWEEPER_SIZES"] = args.sizes
    if args.chunk_bytes:
        os.environ["BENCH_SWEEPER_CHUNK_BYTES"] = str(args.chunk_bytes)
    result = run(args)
    path = harness.write_result("sweeper", result)
    print(f"  -> {path.relative_to(harness.ROOT)}")
    return 0 if all(t["ok"] for t in result["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
