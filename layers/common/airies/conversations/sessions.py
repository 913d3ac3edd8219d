"""Live session state in DynamoDB: connections, the turn in flight, barge-in flags and buffered caller audio.

One table, keys ``pk``/``sk``, TTL on ``ttl``:

- ``conn#<connection_id>`` / ``conn``       which conversation a WebSocket connection belongs to
- ``conv#<conversation_id>`` / ``session``  live state: connections, state machine, VAD counters, current turn,
  the control frames of the current second (flood guard). Written on every caller frame and billed by its size,
  so it carries no agent config:
- ``conv#<conversation_id>`` / ``config``   the agent config the first connect stored (``SessionStore.config``);
  a long one compressed, and its rest in ``config#001``, ``config#002``... when that is still over an item's size
- ``conv#<conversation_id>`` / ``chunk#<utterance>#<seq>``  caller audio of the utterance being spoken

A live session item also carries ``live_shard`` and ``sweep_at`` (epoch seconds, no later than its next deadline:
silence, max duration, abandonment): the sparse index ``live-sessions`` lets the sweeper Query the sessions that
are due instead of scanning the table. Ending a session removes both.

Every transition is a conditional update, so concurrent ``$default`` invocations (API Gateway runs one
per frame) never start two turns for one utterance, and an interrupt marks the running turn cancelled
for the invocation that is speaking it to see before its next post.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from airies.core.config import Settings

LISTENING, THINKING, SPEAKING, ENDED = "listening", "thinking", "speaking", "ended"
# Audio flood guard: a caller cannot stream more than FLOOD_RATIO x real time (+ FLOOD_BURST_MS) since the session
# opened. Checked atomically in the counting update through ``flood_mark`` = audio_ms + FLOOD_RATIO * 1000 *
# started_at, so the rule "audio_ms + chunk <= FLOOD_RATIO * (now - started_at) * 1000 + burst" compares one stored
# attribute with one value, and a refused chunk changes nothing.
FLOOD_RATIO = 1.5
FLOOD_BURST_MS = 5000.0
LIVE_SHARDS = 16  # the live-sessions index's partitions: live#0..live#15


CONFIG_SK = "config"  # sort key of a conversation's agent config item (beside "session" and "chunk#...")
# What one config item holds of the config: DynamoDB refuses an item over 400 KB (its key, attribute names and TTL
# included), and a valid config can be larger (a system prompt of 200,000 characters is up to 800 KB in UTF-8).
# 250 KB leaves room for the rest, and fits even counted as base64 (as moto counts a binary value).
CONFIG_PART_BYTES = 250_000
# A config up to this size is kept as JSON text, rewritten in place at each connect: under half the item limit, so
# the rewrite fits even where the old value is counted beside the new one (moto counts so). Larger ones are packed.
CONFIG_TEXT_BYTES = 180_000


def live_shard(conversation_id: str) -> str:
    return f"live#{zlib.crc32(conversation_id.encode()) % LIVE_SHARDS}"


def _num(value: Any, default: float = 0) -> float:
    if value is None:
        return default
    return float(value["N"]) if isinstance(value, dict) else float(value)


@dataclass
class LiveSession:
    conversation_id: str
    account_id: str
    agent_id: str | None
    agent_version: int
    config: dict[str, Any]  # empty: kept in the config item (``SessionStore.config``); sessions opened before kept it
    state: str
    connections: set[str] = field(default_factory=set)
    utt: int = 0
    seg_start: int = 0  # first audio seq of the utterance being spoken
    eou_seq: int = -1  # last audio seq of the utterance the current turn consumed
    turn_id: str | None = None
    turn_seq: int = 0
    cancelled: str | None = None
    played_ms: int | None = None
    speech_ms: float = 0.0
    silence_ms: float = 0.0
    barge_ms: float = 0.0
    audio_ms: float = 0.0
    started_at: float = 0.0
    last_activity: float = 0.0
    reminder_sent: bool = False
    end_reason: str | None = None
    endpoint: str | None = None
    disconnected_at: float = 0.0  # when a connection last dropped (the resume window runs from the last one)
    started: bool = False  # a ``start`` frame was handled (a later one resumes)
    first_turn: str | None = None  # the turn that speaks the agent's first message, once claimed
    first_done: bool = False  # that turn is over (spoken, cut short, or refused)
    spoken: str | None = None  # JSON: the last finished turn's sentences and their audio offsets (late barge-in)
    running: set[str] = field(default_factory=set)  # turns claimed whose invocation has not finished yet
    speaking_at: float = 0.0  # when the current turn's first audio reached the caller (voice barge-in's backoff)
    protocol: str | None = None  # None: protocol v1; a carrier relay's name (``relay_protocol``) for a phone call

    def caller_gone(self, now: float, resume_window_s: float) -> bool:
        """No connection, and none came back within the resume window since the last one dropped (or, for a
        session that never recorded a drop, since the caller's last activity)."""
        if self.connections:
            return False
        return now - (self.disconnected_at or self.last_activity) >= resume_window_s

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> LiveSession:
        def s(name: str) -> str | None:
            v = item.get(name)
            return v["S"] if v and "S" in v else None

        def b(name: str) -> bool:
            v = item.get(name)
            return bool(v and v.get("BOOL"))

        return cls(
            conversation_id=item["pk"]["S"].split("#", 1)[1],
            account_id=s("account_id") or "",
            agent_id=s("agent_id"),
            agent_version=int(_num(item.get("agent_version"))),
            config=json.loads(s("config") or "{}"),
            state=s("state") or LISTENING,
            connections=set(item.get("conns", {}).get("SS", [])),
            utt=int(_num(item.get("utt"))),
            seg_start=int(_num(item.get("seg_start"))),
            eou_seq=int(_num(item.get("eou_seq"), -1)),
            turn_id=s("turn_id"),
            turn_seq=int(_num(item.get("turn_seq"))),
            cancelled=s("cancelled"),
            played_ms=int(_num(item["played_ms"])) if "played_ms" in item and "N" in item["played_ms"] else None,
            speech_ms=_num(item.get("speech_ms")),
            silence_ms=_num(item.get("silence_ms")),
            barge_ms=_num(item.get("barge_ms")),
            audio_ms=_num(item.get("audio_ms")),
            started_at=_num(item.get("started_at")),
            last_activity=_num(item.get("last_activity")),
            reminder_sent=b("reminder_sent"),
            end_reason=s("end_reason"),
            endpoint=s("endpoint"),
            disconnected_at=_num(item.get("disconnected_at")),
            started=b("started"),
            first_turn=s("first_turn"),
            first_done=b("first_done"),
            spoken=s("spoken"),
            running=set(item.get("running", {}).get("SS", [])),
            speaking_at=_num(item.get("speaking_at")),
            protocol=s("protocol"),
        )


class SessionStore:
    """Typed access to the state table through a low-level boto3 DynamoDB client (fast to build, no resource layer)."""

    def __init__(
        self,
        client: Any,
        table: str,
        *,
        ttl_seconds: int = 7200,
        chunk_ttl_seconds: int = 300,
        index: str = "live-sessions",
        resume_window_s: float = 30.0,
        clock: Any = time.time,
    ) -> None:
        self.client = client
        self.table = table
        self.ttl_seconds = ttl_seconds
        self.chunk_ttl_seconds = chunk_ttl_seconds
        self.index = index
        self.resume_window_s = resume_window_s
        self.clock = clock
        self.ops = {"read": 0, "write": 0}  # counted for the cost model
        # conversation -> (the second its last control frame was counted in, that second's count as the write saw it)
        self.counted: dict[str, tuple[int, int]] = {}

    # -- setup ---------------------------------------------------------------------------------------------------
    def ensure_table(self) -> None:
        """Create the table when missing (local stack and tests only; on AWS the template owns it)."""
        try:
            self.client.describe_table(TableName=self.table)
            return
        except self.client.exceptions.ResourceNotFoundException:
            pass
        self.client.create_table(
            TableName=self.table,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
                {"AttributeName": "live_shard", "AttributeType": "S"},
                {"AttributeName": "sweep_at", "AttributeType": "N"},
            ],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": self.index,
                    "KeySchema": [
                        {"AttributeName": "live_shard", "KeyType": "HASH"},
                        {"AttributeName": "sweep_at", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "KEYS_ONLY"},
                }
            ],
            BillingMode="PAY_PER_REQUEST",
        )

    def _ttl(self) -> dict[str, str]:
        return {"N": str(int(self.clock()) + self.ttl_seconds)}

    def _key(self, conversation_id: str, sk: str = "session") -> dict[str, Any]:
        return {"pk": {"S": f"conv#{conversation_id}"}, "sk": {"S": sk}}

    def _update(self, key: dict[str, Any], expr: str, values: dict[str, Any], **kwargs: Any) -> dict[str, Any] | None:
        self.ops["write"] += 1
        try:
            out = self.client.update_item(
                TableName=self.table, Key=key, UpdateExpression=expr, ExpressionAttributeValues=values, **kwargs
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return None
        return out.get("Attributes", {})

    # -- sessions ------------------------------------------------------------------------------------------------
    def open_session(
        self,
        conversation_id: str,
        *,
        account_id: str,
        agent_id: str | None,
        agent_version: int,
        config: dict[str, Any],
        connection_id: str,
        endpoint: str | None = None,
        first_deadline: float | None = None,
        protocol: str | None = None,
    ) -> tuple[LiveSession, bool]:
        """Attach a connection; creates the session on first connect. Returns (session, resumed).
        ``first_deadline``: the new session's first ``sweep_at`` (default: now). ``protocol``: what the connection
        speaks when it is not protocol v1 (a carrier's relay), kept on the connection and the session."""
        now = self.clock()
        self.ops["write"] += 1
        item = {
            "pk": {"S": f"conn#{connection_id}"},
            "sk": {"S": "conn"},
            "conversation_id": {"S": conversation_id},
            "account_id": {"S": account_id},
            "connected_at": {"N": repr(now)},
            "ttl": self._ttl(),
        }
        if protocol:
            item["protocol"] = {"S": protocol}
        self.client.put_item(TableName=self.table, Item=item)
        values: dict[str, Any] = {
            ":conn": {"SS": [connection_id]},
            ":acc": {"S": account_id},
            ":ver": {"N": str(agent_version)},
            ":now": {"N": repr(now)},
            ":listening": {"S": LISTENING},
            ":zero": {"N": "0"},
            ":ttl": self._ttl(),
            ":ended": {"S": ENDED},
            ":fm": {"N": repr(FLOOD_RATIO * 1000 * now)},
            ":shard": {"S": live_shard(conversation_id)},
            ":due": {"N": repr(first_deadline if first_deadline is not None else now)},
        }
        expr = (
            "ADD conns :conn SET account_id = :acc, "
            "agent_version = if_not_exists(agent_version, :ver), started_at = if_not_exists(started_at, :now), "
            "last_activity = :now, #st = if_not_exists(#st, :listening), utt = if_not_exists(utt, :zero), "
            "turn_seq = if_not_exists(turn_seq, :zero), audio_ms = if_not_exists(audio_ms, :zero), #ttl = :ttl, "
            "flood_mark = if_not_exists(flood_mark, :fm), live_shard = :shard, sweep_at = if_not_exists(sweep_at, :due)"
        )
        names = {"#st": "state", "#ttl": "ttl"}
        if endpoint:
            expr += ", endpoint = :endpoint"
            values[":endpoint"] = {"S": endpoint}
        if agent_id:
            expr += ", agent_id = :agent"
            values[":agent"] = {"S": agent_id}
        if protocol:
            expr += ", #proto = :protocol"
            values[":protocol"] = {"S": protocol}
            names["#proto"] = "protocol"
        expr += " REMOVE disconnected_at"  # a connection is back: the resume window no longer runs
        attrs = self._update(
            self._key(conversation_id),
            expr,
            values,
            ExpressionAttributeNames=names,
            ConditionExpression="attribute_not_exists(#st) OR #st <> :ended",
            ReturnValues="ALL_NEW",
        )
        if attrs is None:
            self.drop_connection(connection_id)
            raise SessionEnded(conversation_id)
        # The agent's config lives in an item of its own, written at each connect (with the session's TTL) and read
        # once per container: the session item is written on every caller frame, and DynamoDB bills each write by
        # the item's size (a config carries the whole system prompt). The first connect's config stays.
        self._store_config(conversation_id, json.dumps(config, separators=(",", ":"), ensure_ascii=False))
        session = LiveSession.from_item(attrs)
        return session, len(session.connections) > 1 or session.turn_seq > 0

    def get(self, conversation_id: str, *, consistent: bool = True) -> LiveSession | None:
        self.ops["read"] += 1
        item = self.client.get_item(TableName=self.table, Key=self._key(conversation_id), ConsistentRead=consistent)
        return LiveSession.from_item(item["Item"]) if "Item" in item else None

    def config(self, conversation_id: str) -> dict[str, Any] | None:
        """The agent config the conversation's first connect stored; None when there is none (never connected, or
        expired with its session)."""
        self.ops["read"] += 1
        item = self.client.get_item(
            TableName=self.table, Key=self._key(conversation_id, CONFIG_SK), ConsistentRead=True
        ).get("Item")
        if not item:
            return None
        if "config" in item:
            loaded: dict[str, Any] = json.loads(item["config"]["S"])
            return loaded
        if "packed" not in item:
            return None
        parts = int(item["parts"]["N"])
        rest = self._config_parts(conversation_id) if parts > 1 else []
        if len(rest) != parts - 1:  # expired while read: the call is over
            return None
        unpacked: dict[str, Any] = json.loads(zlib.decompress(item["packed"]["B"] + b"".join(rest)))
        return unpacked

    def _store_config(self, conversation_id: str, text: str) -> None:
        """The config item, its TTL renewed. Every connect of a conversation stores the same config (its agent
        version is fixed), so a rewrite changes nothing but the TTL. ``text`` is UTF-8 JSON, not escaped to ASCII:
        DynamoDB bills a write by the item's bytes, and an escaped ideograph is 6 of them instead of 3."""
        encoded = text.encode()
        if len(encoded) <= CONFIG_TEXT_BYTES:  # nearly every config
            self.ops["write"] += 1
            self.client.update_item(
                TableName=self.table,
                Key=self._key(conversation_id, CONFIG_SK),
                UpdateExpression="SET config = if_not_exists(config, :cfg), #ttl = :ttl",
                ExpressionAttributeNames={"#ttl": "ttl"},
                ExpressionAttributeValues={":cfg": {"S": text}, ":ttl": self._ttl()},
            )
            return
        packed = zlib.compress(encoded, 6)
        chunks = [packed[i : i + CONFIG_PART_BYTES] for i in range(0, len(packed), CONFIG_PART_BYTES)]
        ttl = self._ttl()
        # The parts after the first are written before the head that names them: a reader that finds the head finds
        # every part.
        for number, chunk in enumerate(chunks[1:], start=1):
            self.ops["write"] += 1
            self.client.put_item(
                TableName=self.table,
                Item={**self._key(conversation_id, f"{CONFIG_SK}#{number:03d}"), "part": {"B": chunk}, "ttl": ttl},
            )
        self.ops["write"] += 1
        self.client.put_item(
            TableName=self.table,
            Item={
                **self._key(conversation_id, CONFIG_SK),
                "packed": {"B": chunks[0]},
                "parts": {"N": str(len(chunks))},
                "ttl": ttl,
            },
        )

    def _config_parts(self, conversation_id: str) -> list[bytes]:
        """A long config's parts after the head, in order."""
        return [
            item["part"]["B"]
            for item in self._query(
                "pk = :pk AND begins_with(sk, :prefix)",
                {":pk": self._key(conversation_id)["pk"], ":prefix": {"S": f"{CONFIG_SK}#"}},
            )
        ]

    def _query(self, condition: str, values: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The items of a strongly consistent Query on the table, every page (each one read counted)."""
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": condition,
            "ExpressionAttributeValues": values,
            "ConsistentRead": True,
        }
        while True:
            self.ops["read"] += 1
            page = self.client.query(**kwargs)
            yield from page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def get_many(self, conversation_ids: list[str]) -> dict[str, LiveSession]:
        """The live sessions of these conversations (those that have one), read in batches of 100."""
        found: dict[str, LiveSession] = {}
        for start in range(0, len(conversation_ids), 100):
            keys = [self._key(cid) for cid in dict.fromkeys(conversation_ids[start : start + 100])]
            request: dict[str, Any] = {self.table: {"Keys": keys, "ConsistentRead": True}}
            while request:
                self.ops["read"] += 1
                page = self.client.batch_get_item(RequestItems=request)
                for item in page.get("Responses", {}).get(self.table, []):
                    session = LiveSession.from_item(item)
                    found[session.conversation_id] = session
                request = page.get("UnprocessedKeys") or {}
        return found

    def connection(self, connection_id: str) -> dict[str, str] | None:
        self.ops["read"] += 1
        item = self.client.get_item(
            TableName=self.table, Key={"pk": {"S": f"conn#{connection_id}"}, "sk": {"S": "conn"}}, ConsistentRead=True
        ).get("Item")
        if not item:
            return None
        found = {"conversation_id": item["conversation_id"]["S"], "account_id": item["account_id"]["S"]}
        if "protocol" in item:
            found["protocol"] = item["protocol"]["S"]
        return found

    def drop_connection(self, connection_id: str, conversation_id: str | None = None) -> None:
        """Forget one connection (disconnect or 410 Gone): the conversation and its other connections stay."""
        self.ops["write"] += 1
        self.client.delete_item(TableName=self.table, Key={"pk": {"S": f"conn#{connection_id}"}, "sk": {"S": "conn"}})
        if conversation_id:
            self._update(
                self._key(conversation_id),
                # Abandonment is due a resume window from now (earlier than any deadline is fine: the sweeper
                # reschedules a session that is not due yet).
                "DELETE conns :c SET disconnected_at = :now, sweep_at = :abandon",
                {
                    ":c": {"SS": [connection_id]},
                    ":now": {"N": repr(self.clock())},
                    ":abandon": {"N": repr(self.clock() + self.resume_window_s)},
                },
                ConditionExpression="attribute_exists(pk)",
            )

    def touch(self, conversation_id: str) -> None:
        self._update(
            self._key(conversation_id),
            "SET last_activity = :now, reminder_sent = :f",
            {":now": {"N": repr(self.clock())}, ":f": {"BOOL": False}},
            ConditionExpression="attribute_exists(pk)",
        )

    def mark_reminded(self, conversation_id: str, last_activity: float) -> bool:
        """Claim the (single) silence reminder; False if another invocation did, or the caller spoke meanwhile."""
        attrs = self._update(
            self._key(conversation_id),
            "SET reminder_sent = :t, last_activity = :now",
            {
                ":t": {"BOOL": True},
                ":f": {"BOOL": False},
                ":now": {"N": repr(self.clock())},
                ":seen": {"N": repr(last_activity)},
                ":listening": {"S": LISTENING},
            },
            ExpressionAttributeNames={"#st": "state"},
            ConditionExpression="last_activity = :seen AND #st = :listening AND "
            "(attribute_not_exists(reminder_sent) OR reminder_sent = :f)",
        )
        return attrs is not None

    def end(self, conversation_id: str, reason: str) -> LiveSession | None:
        """Mark ended once; returns the session if this call ended it, None if it was already ended (or unknown)."""
        attrs = self._update(
            self._key(conversation_id),
            "SET #st = :ended, end_reason = :r, cancelled = if_not_exists(turn_id, :none) REMOVE live_shard, sweep_at",
            {":ended": {"S": ENDED}, ":r": {"S": reason}, ":none": {"S": "-"}},
            ExpressionAttributeNames={"#st": "state"},
            ConditionExpression="attribute_exists(pk) AND #st <> :ended",
            ReturnValues="ALL_NEW",
        )
        return LiveSession.from_item(attrs) if attrs is not None else None

    def claim_start(self, conversation_id: str) -> bool:
        """The first ``start`` of the conversation (True once; a later ``start`` resumes)."""
        return self._claim_once(conversation_id, "started", {"BOOL": True})

    def claim_first_message(self, conversation_id: str, turn_id: str) -> bool:
        """The right to speak the agent's first message, as turn ``turn_id`` (True for exactly one caller)."""
        return self._claim_once(conversation_id, "first_turn", {"S": turn_id})

    def first_message_over(self, conversation_id: str) -> None:
        """The first message's turn is over: caller turns held back for it may run."""
        self._update(self._key(conversation_id), "SET first_done = :t", {":t": {"BOOL": True}})

    def _claim_once(self, conversation_id: str, attribute: str, value: dict[str, Any]) -> bool:
        return (
            self._update(
                self._key(conversation_id),
                "SET #a = :v",
                {":v": value, ":ended": {"S": ENDED}},
                ExpressionAttributeNames={"#a": attribute, "#st": "state"},
                ConditionExpression="attribute_exists(pk) AND attribute_not_exists(#a) AND #st <> :ended",
            )
            is not None
        )

    # -- turns ---------------------------------------------------------------------------------------------------
    def begin_turn(
        self,
        conversation_id: str,
        turn_id: str,
        *,
        expected_utt: int | None = None,
        caller_activity: bool = True,
        end_seq: int | None = None,
        vad: tuple[float, float] | None = None,
        count_limit: int | None = None,
    ) -> LiveSession | None:
        """Start a turn: listening/speaking -> thinking. A running turn is cancelled (the caller spoke over it).

        ``expected_utt`` makes audio-triggered starts idempotent: the client's end_of_utterance and the
        server VAD may both fire for one utterance, only the first starts a turn.

        ``count_limit``: the frame that starts the turn is also counted by the flood guard in the same write (as
        ``count_control_frame`` would, in the second this container's last count points to). None then also when
        the count refused it or that guess was wrong: the caller counts it alone to tell.
        """
        values: dict[str, Any] = {
            ":thinking": {"S": THINKING},
            ":turn": {"S": turn_id},
            ":one": {"N": "1"},
            ":zero": {"N": "0"},
            ":ended": {"S": ENDED},
            ":run": {"SS": [turn_id]},
        }
        activity = ""
        if caller_activity:  # the silence timer restarts only when the caller did something
            activity = ", last_activity = :now, reminder_sent = :f"
            values.update({":now": {"N": repr(self.clock())}, ":f": {"BOOL": False}})
        if end_seq is not None:  # the utterance is chunks [seg_start, end_seq]; the next one starts after it
            activity += ", eou_seq = :eou, seg_start = :next"
            values.update({":eou": {"N": str(end_seq)}, ":next": {"N": str(end_seq + 1)}})
        condition = "attribute_exists(pk) AND #st <> :ended"
        if vad is not None:  # (min speech, min stored trailing silence): the end-of-utterance rule, checked atomically
            condition += " AND #st = :listening AND speech_ms >= :minsp AND silence_ms >= :minsil"
            values.update(
                {":listening": {"S": LISTENING}, ":minsp": {"N": repr(vad[0])}, ":minsil": {"N": repr(vad[1])}}
            )
        if expected_utt is not None:
            condition += " AND utt = :utt"
            values[":utt"] = {"N": str(expected_utt)}
        counted = ""
        second = int(self.clock())
        if count_limit is not None:
            values[":s"] = {"N": str(second)}
            if self._counted_in(conversation_id, second):
                counted = ", ctl_n :one"
                condition += " AND ctl_s = :s AND ctl_n < :limit"
                values[":limit"] = {"N": str(count_limit)}
            else:
                activity += ", ctl_s = :s, ctl_n = :one"
                condition += " AND (attribute_not_exists(ctl_s) OR ctl_s <> :s)"
        attrs = self._update(
            self._key(conversation_id),
            "SET #st = :thinking, turn_id = :turn, speech_ms = :zero, silence_ms = :zero, barge_ms = :zero"
            + activity
            + " REMOVE played_ms ADD utt :one, turn_seq :one, running :run"
            + counted,
            values,
            ExpressionAttributeNames={"#st": "state"},
            ConditionExpression=condition,
            ReturnValues="ALL_OLD",
        )
        if attrs is None:
            return None
        if count_limit is not None:  # the old values: this frame made the count one more (or one, a new second)
            self._counted(conversation_id, second, int(attrs.get("ctl_n", {}).get("N", "0")) + 1 if counted else 1)
        previous = LiveSession.from_item(attrs)
        if previous.state in (THINKING, SPEAKING) and previous.turn_id:
            self._update(self._key(conversation_id), "SET cancelled = :old", {":old": {"S": previous.turn_id}})
        return previous  # old values: previous.utt is the utterance this turn consumes, turn_seq+1 its seq

    def set_speaking(self, conversation_id: str, turn_id: str) -> bool:
        """thinking -> speaking once the turn's first audio is out. Only from thinking: a late call (after the turn
        finished, was cancelled or the conversation ended) changes nothing."""
        return (
            self._update(
                self._key(conversation_id),
                "SET #st = :speaking, speaking_at = :now",
                {
                    ":speaking": {"S": SPEAKING},
                    ":thinking": {"S": THINKING},
                    ":turn": {"S": turn_id},
                    ":now": {"N": repr(self.clock())},
                },
                ExpressionAttributeNames={"#st": "state"},
                ConditionExpression="turn_id = :turn AND #st = :thinking "
                "AND (attribute_not_exists(cancelled) OR cancelled <> :turn)",
            )
            is not None
        )

    def finish_turn(self, conversation_id: str, turn_id: str, spoken: str | None = None) -> LiveSession | None:
        """The turn's invocation is done with it (stored or not): it leaves ``running``. Back to listening, unless
        a newer turn already took over (or the conversation ended): then None. ``spoken`` (the turn's sentences and their audio offsets) is kept until the next turn starts, for a barge-in
        that arrives after the turn's last frame. The answer says whether the turn was cancelled meanwhile."""
        values: dict[str, Any] = {
            ":listening": {"S": LISTENING},
            ":turn": {"S": turn_id},
            ":now": {"N": repr(self.clock())},
            ":ended": {"S": ENDED},
            ":run": {"SS": [turn_id]},
        }
        expr = "SET #st = :listening, last_activity = :now"
        if spoken is not None:
            expr += ", spoken = :spoken"
            values[":spoken"] = {"S": spoken}
        attrs = self._update(
            self._key(conversation_id),
            expr + " DELETE running :run",
            values,
            ExpressionAttributeNames={"#st": "state"},
            ConditionExpression="turn_id = :turn AND #st <> :ended",
            ReturnValues="ALL_NEW",
        )
        if attrs is None:  # a newer turn took over, or the call ended (and may be waiting for this turn)
            self._update(
                self._key(conversation_id),
                "DELETE running :run",
                {":run": {"SS": [turn_id]}},
                ConditionExpression="attribute_exists(pk)",
            )
            return None
        return LiveSession.from_item(attrs)

    def wait_until(
        self,
        conversation_id: str,
        predicate: Callable[[LiveSession], bool],
        timeout_s: float,
        interval_s: float = 0.05,
    ) -> LiveSession | None:
        """Read the live state every ``interval_s`` until ``predicate`` holds for it, the session is gone (None) or
        ``timeout_s`` has passed. Returns the session as last read."""
        deadline = time.monotonic() + timeout_s
        while True:
            session = self.get(conversation_id)
            if session is None or predicate(session) or time.monotonic() >= deadline:
                return session
            time.sleep(interval_s)

    def wait_for_turns(self, conversation_id: str, *, timeout_s: float) -> LiveSession | None:
        """Wait (at most ``timeout_s``) until no turn of the conversation is running: each claimed turn leaves the
        ``running`` set once its invocation has stored it. Returns the session as last read."""
        return self.wait_until(conversation_id, lambda session: not session.running, timeout_s)

    def cancel_turn(
        self, conversation_id: str, played_ms: int | None = None, *, turn_id: str | None = None
    ) -> str | None:
        """Barge-in: mark the turn in flight (``turn_id``, when given) cancelled. Returns its id, or None when
        nothing (or another turn) was being spoken."""
        values: dict[str, Any] = {
            ":thinking": {"S": THINKING},
            ":speaking": {"S": SPEAKING},
            ":listening": {"S": LISTENING},
        }
        expr = "SET cancelled = turn_id, #st = :listening"
        if played_ms is not None:
            expr += ", played_ms = :played"
            values[":played"] = {"N": str(played_ms)}
        condition = "#st IN (:thinking, :speaking)"
        if turn_id is not None:
            condition += " AND turn_id = :turn"
            values[":turn"] = {"S": turn_id}
        attrs = self._update(
            self._key(conversation_id),
            expr,
            values,
            ExpressionAttributeNames={"#st": "state"},
            ConditionExpression=condition,
            ReturnValues="ALL_NEW",
        )
        return LiveSession.from_item(attrs).turn_id if attrs else None

    def cancel_finished_turn(self, conversation_id: str, turn_id: str, played_ms: int) -> LiveSession | None:
        """Barge-in after the turn's last frame: the turn is over but still the last one (no newer turn started)
        and not cut to a played_ms yet (a cut by the server's VAD has none). Returns the session (with the turn's
        ``spoken`` record), or None."""
        attrs = self._update(
            self._key(conversation_id),
            "SET cancelled = :turn, played_ms = :played",
            {":turn": {"S": turn_id}, ":played": {"N": str(played_ms)}, ":listening": {"S": LISTENING}},
            ExpressionAttributeNames={"#st": "state"},
            ConditionExpression="turn_id = :turn AND #st = :listening "
            "AND (attribute_not_exists(cancelled) OR cancelled <> :turn OR attribute_not_exists(played_ms))",
            ReturnValues="ALL_NEW",
        )
        return LiveSession.from_item(attrs) if attrs else None

    def turn_status(self, conversation_id: str, turn_id: str) -> tuple[bool, int | None]:
        """(cancelled, played_ms) for the running turn: checked before every post."""
        self.ops["read"] += 1
        item = self.client.get_item(
            TableName=self.table,
            Key=self._key(conversation_id),
            ConsistentRead=True,
            ProjectionExpression="cancelled, #st, played_ms",
            ExpressionAttributeNames={"#st": "state"},
        ).get("Item")
        if not item:
            return True, None
        cancelled = item.get("cancelled", {}).get("S") == turn_id or item.get("state", {}).get("S") == ENDED
        played = int(item["played_ms"]["N"]) if "played_ms" in item else None
        return cancelled, played

    # -- audio ---------------------------------------------------------------------------------------------------
    def add_audio(
        self,
        conversation_id: str,
        *,
        chunk_ms: float,
        speech_ms: float,
        trailing_silence_ms: float,
    ) -> LiveSession | None:
        """Count a chunk into the VAD state; returns the updated session (the caller decides whether to store it),
        None when the conversation has ended. Raises :class:`AudioFlood` (and counts nothing) when the chunk would
        take the caller past FLOOD_RATIO x real time: the check and the count are one conditional write."""
        now = self.clock()
        values: dict[str, Any] = {
            ":ms": {"N": repr(chunk_ms)},
            ":ended": {"S": ENDED},
            ":limit": {"N": repr(FLOOD_RATIO * 1000 * now + FLOOD_BURST_MS - chunk_ms)},
        }
        if speech_ms > 0:
            expr = (
                "SET silence_ms = :trail, last_activity = :now, reminder_sent = :f "
                "ADD speech_ms :sp, audio_ms :ms, barge_ms :sp, flood_mark :ms"
            )
            values.update(
                {
                    ":trail": {"N": repr(trailing_silence_ms)},
                    ":sp": {"N": repr(speech_ms)},
                    ":now": {"N": repr(now)},
                    ":f": {"BOOL": False},
                }
            )
        else:
            expr = "ADD silence_ms :ms, audio_ms :ms, flood_mark :ms"
        attrs = self._update(
            self._key(conversation_id),
            expr,
            values,
            ExpressionAttributeNames={"#st": "state"},
            ConditionExpression="attribute_exists(pk) AND #st <> :ended "
            "AND (attribute_not_exists(flood_mark) OR flood_mark <= :limit)",
            ReturnValues="ALL_NEW",
        )
        if attrs is None:
            current = self.get(conversation_id)  # only on refusal: ended, or a flood?
            if current is None or current.state == ENDED:
                return None
            raise AudioFlood(conversation_id)
        return LiveSession.from_item(attrs)

    def store_chunk(self, conversation_id: str, seq: int, pcm: bytes) -> None:
        self.ops["write"] += 1
        self.ops["chunk_write"] = self.ops.get("chunk_write", 0) + 1
        self.client.put_item(
            TableName=self.table,
            Item={
                "pk": {"S": f"conv#{conversation_id}"},
                "sk": {"S": f"chunk#{seq:09d}"},
                "data": {"B": pcm},
                "ttl": {"N": str(int(self.clock()) + self.chunk_ttl_seconds)},  # short: a turn reads it within seconds
            },
        )

    def utterance_audio(
        self, conversation_id: str, start_seq: int, end_seq: int | None, *, wait_s: float = 0.6
    ) -> tuple[bytes, int, list[int]]:
        """The buffered chunks with seq in [start_seq, end_seq], in order: their audio, the highest seq found and
        the seqs read (for ``delete_chunks``).

        API Gateway runs one invocation per frame, concurrently, so the chunk that ended an utterance can be
        processed before an earlier one is stored: missing seqs inside the range are waited for (briefly).
        """
        upper = end_seq if end_seq is not None else 999_999_999
        deadline = time.monotonic() + wait_s
        while True:
            chunks = self._chunks(conversation_id, start_seq, upper)
            seqs = sorted(chunks)
            complete = bool(seqs) and seqs == list(range(seqs[0], (end_seq if end_seq is not None else seqs[-1]) + 1))
            if complete or time.monotonic() >= deadline:
                return b"".join(chunks[q] for q in seqs), (seqs[-1] if seqs else start_seq - 1), seqs
            time.sleep(0.03)

    def _chunks(self, conversation_id: str, lo: int, hi: int) -> dict[int, bytes]:
        items = self._query(
            "pk = :pk AND sk BETWEEN :lo AND :hi",
            {
                ":pk": self._key(conversation_id)["pk"],
                ":lo": {"S": f"chunk#{max(lo, 0):09d}"},
                ":hi": {"S": f"chunk#{hi:09d}"},
            },
        )
        return {int(item["sk"]["S"].split("#", 1)[1]): item["data"]["B"] for item in items}

    def set_segment_start(self, conversation_id: str, seq: int) -> None:
        self._update(self._key(conversation_id), "SET seg_start = :s", {":s": {"N": str(seq)}})

    def count_control_frame(self, conversation_id: str, limit: int) -> LiveSession | None:
        """Flood guard for control frames, and the frame's read of the live state, in one conditional write: the
        session item counts the control frames of the current second (``ctl_s``, ``ctl_n``) and is returned as
        updated. None when there is no live session. Raises :class:`ControlFlood` (and counts nothing) past
        ``limit`` frames in a second.

        A second's first frame starts the count, the next ones add to it: two different updates. The one tried
        first is the one this container's last count points to, so a frame usually costs one write."""
        second = int(self.clock())
        fresh = (
            "SET ctl_s = :s, ctl_n = :one",
            "attribute_exists(pk) AND (attribute_not_exists(ctl_s) OR ctl_s <> :s)",
            {":s": {"N": str(second)}, ":one": {"N": "1"}},
        )
        more = (
            "ADD ctl_n :one",
            "ctl_s = :s AND ctl_n < :limit",
            {":s": {"N": str(second)}, ":one": {"N": "1"}, ":limit": {"N": str(limit)}},
        )
        attempts = (more, fresh) if self._counted_in(conversation_id, second) else (fresh, more)
        for expr, condition, values in attempts:
            attrs = self._update(
                self._key(conversation_id), expr, values, ConditionExpression=condition, ReturnValues="ALL_NEW"
            )
            if attrs is not None:
                self._counted(conversation_id, second, int(attrs["ctl_n"]["N"]))
                return LiveSession.from_item(attrs)
        if self.get(conversation_id) is None:  # refused by both: no session, or this second's count is full
            return None
        self._counted(conversation_id, second, limit)
        raise ControlFlood(conversation_id)

    def count_full(self, conversation_id: str, limit: int) -> bool:
        """This container's last count of the call's control frames says the current second is full (a hint: the
        count itself is a conditional write). A typed turn asks the model before its claim counts the frame, so a
        frame that would be refused is counted first instead."""
        known = self.counted.get(conversation_id)
        return known is not None and known[0] == int(self.clock()) and known[1] >= limit

    def _counted_in(self, conversation_id: str, second: int) -> bool:
        known = self.counted.get(conversation_id)
        return known is not None and known[0] == second

    def _counted(self, conversation_id: str, second: int, count: int) -> None:
        if len(self.counted) >= 10_000:
            self.counted.clear()  # a hint only
        self.counted[conversation_id] = (second, count)

    def due_sessions(self, now: float, *, limit: int) -> list[LiveSession]:
        """Live sessions whose ``sweep_at`` has come (at most ``limit``): a Query of each shard of the sparse
        live-sessions index, paged, starting at a shard that turns every minute so a full run leaves none behind
        for long. The index holds keys only: the sessions are then read in batches."""
        conversation_ids: list[str] = []
        first = int(now // 60) % LIVE_SHARDS
        for offset in range(LIVE_SHARDS):
            kwargs: dict[str, Any] = {
                "TableName": self.table,
                "IndexName": self.index,
                "KeyConditionExpression": "live_shard = :shard AND sweep_at <= :now",
                "ExpressionAttributeValues": {
                    ":shard": {"S": f"live#{(first + offset) % LIVE_SHARDS}"},
                    ":now": {"N": repr(now)},
                },
            }
            while len(conversation_ids) < limit:
                kwargs["Limit"] = limit - len(conversation_ids)
                self.ops["read"] += 1
                page = self.client.query(**kwargs)
                conversation_ids += [item["pk"]["S"].split("#", 1)[1] for item in page.get("Items", [])]
                if "LastEvaluatedKey" not in page:
                    break
                kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        sessions = self.get_many(conversation_ids)
        return [
            sessions[cid] for cid in dict.fromkeys(conversation_ids) if cid in sessions and sessions[cid].state != ENDED
        ]

    def reschedule(self, conversation_id: str, sweep_at: float) -> None:
        """The session's next deadline (for the sweeper's index); nothing for a session that has ended."""
        self._update(
            self._key(conversation_id),
            "SET sweep_at = :at",
            {":at": {"N": repr(sweep_at)}},
            ConditionExpression="attribute_exists(live_shard)",
        )

    def delete_chunks(self, conversation_id: str, seqs: list[int]) -> None:
        """Delete the caller audio chunks a turn used (their short TTL is the backstop)."""
        keys = [self._key(conversation_id, f"chunk#{seq:09d}") for seq in sorted(set(seqs))]
        for start in range(0, len(keys), 25):
            requests = [{"DeleteRequest": {"Key": key}} for key in keys[start : start + 25]]
            pending: dict[str, Any] = {self.table: requests}
            for _ in range(5):  # unprocessed deletes are retried a few times, then left to the TTL
                self.ops["write"] += 1
                pending = self.client.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}
                if not pending:
                    break


class AudioFlood(Exception):
    """Audio arriving far faster than real time: the chunk was refused and nothing was counted."""

    def __init__(self, conversation_id: str) -> None:
        super().__init__(f"audio for {conversation_id} is arriving faster than real time")
        self.conversation_id = conversation_id


class ControlFlood(Exception):
    """More control frames in a second than allowed: the frame was refused and not counted."""

    def __init__(self, conversation_id: str) -> None:
        super().__init__(f"too many control frames for {conversation_id}")
        self.conversation_id = conversation_id


class SessionEnded(Exception):
    def __init__(self, conversation_id: str) -> None:
        super().__init__(f"conversation {conversation_id} has ended")
        self.conversation_id = conversation_id


def dynamodb_client(settings: Settings) -> Any:
    import boto3  # lazy: boto3 costs ~100 ms to import

    return boto3.client("dynamodb", region_name=settings.aws_region, endpoint_url=settings.aws_endpoint_url)


def build_session_store(settings: Settings, client: Any = None) -> SessionStore:
    store = SessionStore(
        client or dynamodb_client(settings),
        settings.ws_state_table,
        ttl_seconds=settings.ws_state_ttl_seconds,
        chunk_ttl_seconds=settings.ws_audio_chunk_ttl_seconds,
        index=settings.ws_sessions_index,
        resume_window_s=settings.ws_resume_window_seconds,
    )
    if not settings.on_aws:
        store.ensure_table()
    return store
