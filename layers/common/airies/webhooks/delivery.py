"""Delivering server messages: the backoff and the worker (the queue between publisher and worker: ``queue``).

At-least-once: every attempt is one queue message ``{delivery_id, attempt, client_errors, not_before}``. The worker
POSTs, then records attempt ``n`` only if the row still says ``n - 1`` attempts (so a duplicate or stale message is a
no-op), and enqueues the next attempt (or the dead letter) before that record commits: when the enqueue fails the
record rolls back and the queue hands the message out again.

Outcomes: 2xx delivered; 410 disables the endpoint (failed); 408, 429, 5xx, timeouts and connection errors retry
with exponential backoff and jitter until ``webhook_max_age_s`` after the first attempt; any other answer (other 4xx,
a redirect other than 307/308, a URL the guard refuses) retries ``webhook_max_client_error_attempts`` times in all.
A backoff longer than SQS's 15-minute delay is reached in hops (``not_before``).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin

import httpx
from sqlalchemy import update

from airies.core.config import Settings
from airies.core.database import Database
from airies.core.guarded_http import guarded_client
from airies.core.models import utcnow
from airies.core.secrets import EnvelopeCipher, Sealed, get_cipher
from airies.core.url_guard import URLGuard, URLNotAllowed, url_guard
from airies.webhooks.models import WebhookDelivery, WebhookEndpoint, secret_context
from airies.webhooks.queue import MAX_DELAY_HOP_S, DeliveryQueue
from airies.webhooks.schemas import DeliveryMessage
from airies.webhooks.signing import EVENT_ID_HEADER, EVENT_TYPE_HEADER, SIGNATURE_HEADER, signature_header

MAX_BACKOFF_S = 4 * 3600
MAX_REDIRECTS = 3
USER_AGENT = "Airies-Webhooks/1.0"


def backoff_s(attempt: int, base_s: float, rng: Callable[[], float] = random.random) -> float:
    """The wait after failed attempt ``attempt`` (1, 2, ...): base * 2^(attempt-1), capped, jittered to 50-100 %."""
    delay = min(MAX_BACKOFF_S, base_s * 2 ** min(attempt - 1, 30))
    return delay * (0.5 + rng() / 2)


def payload_body(payload: dict[str, Any]) -> bytes:
    """The exact bytes sent (and signed): compact JSON, keys in a stable order."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str).encode("utf-8")


@dataclass(frozen=True)
class Response:
    status_code: int | None  # None: no answer (timeout, connection error, refused URL)
    latency_ms: int
    error: str | None  # our own description; never the receiver's body


@dataclass(frozen=True)
class Target:
    url: str
    body: bytes
    secret: str
    event_type: str
    window_started: datetime


@dataclass(frozen=True)
class Outcome:
    result: str  # delivered | retry | failed | deferred | stale
    response: Response | None = None


class WebhookDeliverer:
    def __init__(
        self,
        database: Database,
        settings: Settings,
        queue: DeliveryQueue,
        *,
        cipher: EnvelopeCipher | None = None,
        guard: URLGuard | None = None,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.database = database
        self.settings = settings
        self.queue = queue
        self.cipher = cipher or get_cipher(settings)
        self.guard = guard or url_guard(settings)
        self.clock = clock
        self.rng = rng
        self._http: httpx.Client | None = None

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            self._http = guarded_client(
                self.guard, timeout=httpx.Timeout(self.settings.webhook_timeout_s), follow_redirects=False
            )
        return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    # -- one message ----------------------------------------------------------------------------------------------
    def handle(self, message: DeliveryMessage) -> Outcome:
        now = self.clock()
        if message.not_before is not None and message.not_before - now >= 1:
            self.queue.send(message, math.ceil(message.not_before - now))
            return Outcome("deferred")
        target = self._target(message)
        if target == "stale":
            return Outcome("stale")  # a duplicate, or an attempt already recorded
        if isinstance(target, str):
            return self._record(message, Response(None, 0, target), "failed")
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: signature_header(target.secret, target.body, timestamp=int(self.clock())),
            EVENT_ID_HEADER: message.delivery_id,
            EVENT_TYPE_HEADER: target.event_type,
        }
        response = self.post(target.url, target.body, headers)
        return self._decide(message, response, target.window_started)

    def _target(self, message: DeliveryMessage) -> Target | str:
        """What attempt ``message`` sends where; else "stale", or why the event cannot be sent any more."""
        with self.database.session() as session:
            row = session.get(WebhookDelivery, message.delivery_id)
            if row is None or row.status != "pending" or row.attempts != message.attempt - 1:
                return "stale"
            endpoint = session.get(WebhookEndpoint, row.endpoint_id) if row.endpoint_id else None
            if endpoint is None:
                return "endpoint deleted"
            if not endpoint.enabled:
                return "endpoint disabled"
            sealed = Sealed(endpoint.secret_ciphertext, endpoint.secret_encrypted_data_key, endpoint.secret_key_ref)
            return Target(
                url=endpoint.url,
                body=payload_body(row.payload),
                secret=self.cipher.open(sealed, secret_context(endpoint)),
                event_type=row.event_type,
                window_started=row.window_started_at,
            )

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Response:
        """POST through the URL guard; 307/308 redirects are followed (each hop guarded), other 3xx are answers."""
        started = time.perf_counter()
        try:
            for _ in range(MAX_REDIRECTS + 1):
                self.guard.check_syntax(url)
                with self.http.stream("POST", url, content=body, headers=headers) as answer:
                    self._drain(answer)
                    location = answer.headers.get("location")
                    if answer.status_code in (307, 308) and location:
                        url = urljoin(url, location)
                        continue
                    error = None if 200 <= answer.status_code < 300 else f"HTTP {answer.status_code}"
                    return Response(answer.status_code, _ms(started), error)
            return Response(None, _ms(started), f"more than {MAX_REDIRECTS} redirects")
        except URLNotAllowed as exc:
            return Response(None, _ms(started), f"url_not_allowed: {exc.message}"[:300])
        except httpx.TimeoutException:
            return Response(None, _ms(started), "timeout")
        except httpx.HTTPError as exc:
            return Response(None, _ms(started), f"connection error: {type(exc).__name__}")

    def _drain(self, answer: httpx.Response) -> None:
        """Read at most the configured bytes of the answer, and drop them: a receiver's body is never kept."""
        read = 0
        for chunk in answer.iter_raw():
            read += len(chunk)
            if read >= self.settings.webhook_max_response_bytes:
                break

    # -- the outcome ----------------------------------------------------------------------------------------------
    def _decide(self, message: DeliveryMessage, response: Response, window_started: datetime) -> Outcome:
        code = response.status_code
        if code is not None and 200 <= code < 300:
            return self._record(message, response, "delivered")
        if code == 410:
            return self._record(message, response, "failed", disable=True)
        retryable = code is None and not (response.error or "").startswith("url_not_allowed")
        retryable = retryable or code in (408, 429) or (code is not None and code >= 500)
        client_errors = message.client_errors + (0 if retryable else 1)
        if not retryable and client_errors >= self.settings.webhook_max_client_error_attempts:
            return self._record(message, response, "failed")
        delay = backoff_s(message.attempt, self.settings.webhook_retry_base_s, self.rng)
        due = self.clock() + delay
        if due - window_started.timestamp() > self.settings.webhook_max_age_s:
            return self._record(message, response, "failed")
        follow = DeliveryMessage(
            delivery_id=message.delivery_id,
            attempt=message.attempt + 1,
            client_errors=client_errors,
            not_before=due if delay > MAX_DELAY_HOP_S else None,
        )
        return self._record(message, response, "retry", follow=follow, delay=delay)

    def _record(
        self,
        message: DeliveryMessage,
        response: Response,
        result: str,
        *,
        follow: DeliveryMessage | None = None,
        delay: float = 0.0,
        disable: bool = False,
    ) -> Outcome:
        now = utcnow()
        values: dict[str, Any] = {
            "attempts": message.attempt,
            "status": "pending" if result == "retry" else result,
            "last_status_code": response.status_code,
            "last_latency_ms": response.latency_ms,
            "last_error": response.error,
            "next_attempt_at": datetime.fromtimestamp(self.clock() + delay, UTC) if follow else None,
            "updated_at": now,
        }
        if result == "delivered":
            values["delivered_at"] = now
        if disable:
            values["last_error"] = "the receiver answered 410 Gone: endpoint disabled"
        with self.database.session() as session:
            claimed = session.execute(  # type: ignore[attr-defined]  # an UPDATE's result is a CursorResult
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == message.delivery_id,
                    WebhookDelivery.status == "pending",
                    WebhookDelivery.attempts == message.attempt - 1,
                )
                .values(**values)
            ).rowcount
            if not claimed:
                return Outcome("stale", response)
            if disable:
                row = session.get(WebhookDelivery, message.delivery_id)
                if row is not None and row.endpoint_id:
                    session.execute(
                        update(WebhookEndpoint)
                        .where(WebhookEndpoint.id == row.endpoint_id)
                        .values(enabled=False, disabled_reason=f"410 Gone at {now.isoformat()}", updated_at=now)
                    )
            # Enqueued before the record commits: a failed send rolls it back and the message comes again.
            if follow is not None:
                self.queue.send(follow, math.ceil(min(delay, MAX_DELAY_HOP_S)))
            elif result == "failed":
                self.queue.dead_letter(message, response.error or "failed")
        return Outcome(result, response)


def _ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
