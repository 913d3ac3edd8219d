"""The bridge's asyncio service: Twilio's streams on ``path``, the load balancer's health check on ``health_path``.

Per call: wait for Twilio's ``start`` (``start_timeout_s``), open the voice WebSocket API with the conversation's
token, send ``start``, then pump both ways until either side ends the call:

- Twilio sends ``stop`` or closes: the bridge sends ``end``, waits briefly for ``ended``, and closes the API socket;
- the API sends ``ended`` or closes: the bridge lets the caller hear the audio already sent (a last mark, at most
  ``end_grace_s``), then closes Twilio's stream, which ends the call (nothing follows ``<Connect>`` in the TwiML).

A message either side sends that the bridge cannot read is logged and skipped; the call carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import webrtcvad
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.http11 import Request, Response

from airies.media_bridge import messages as tm
from airies.media_bridge.call import MediaCall, Outcome
from airies.media_bridge.config import BridgeConfig

log = logging.getLogger("airies.media_bridge")
POLICY_VIOLATION = 1008  # WebSocket close codes
INTERNAL_ERROR = 1011
API_MAX_FRAME = 2**20  # the API's messages are at most 128 KB (API Gateway's limit)


class MediaBridge:
    def __init__(self, config: BridgeConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.active = 0
        self.calls = 0
        self.bad_messages = 0
        self.failed_calls = 0
        self.server: Server | None = None

    # -- HTTP: health and routing ----------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return {"status": "ok", "active_calls": self.active, "max_calls": self.config.max_calls}

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == self.config.health_path:
            response = connection.respond(HTTPStatus.OK, json.dumps(self.health()) + "\n")
            response.headers["Content-Type"] = "application/json"
            return response
        if path != self.config.path:
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        if self.active >= self.config.max_calls:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "at capacity\n")
        return None

    # -- one call --------------------------------------------------------------------------------------------------
    async def handle(self, twilio: ServerConnection) -> None:
        self.active += 1
        self.calls += 1
        try:
            await self._call(twilio)
        except Exception:
            self.failed_calls += 1
            log.exception("call failed")
            await twilio.close(INTERNAL_ERROR, "bridge error")
        finally:
            self.active -= 1

    async def _call(self, twilio: ServerConnection) -> None:
        call = MediaCall(self.config, vad=webrtcvad.Vad(self.config.vad_aggressiveness), clock=self.clock)
        start = await self._wait_for_start(twilio)
        if start is None:
            await twilio.close(POLICY_VIOLATION, "no start")
            return
        try:
            url = call.start(start)
        except tm.BadMessage as exc:
            log.warning("stream %s refused: %s", start.stream_sid, exc)
            await twilio.close(POLICY_VIOLATION, "no conversation")
            return
        try:
            api = await connect(url, open_timeout=self.config.connect_timeout_s, max_size=API_MAX_FRAME)
        except (InvalidHandshake, InvalidURI, OSError, TimeoutError) as exc:
            log.warning("call %s: the API refused conversation %s: %s", call.call_sid, call.conversation_id, exc)
            await twilio.close(POLICY_VIOLATION, "conversation refused")
            return
        log.info("call %s bridged to conversation %s", call.call_sid, call.conversation_id)
        async with api:
            await api.send(json.dumps({"action": "start"}))
            upstream = asyncio.create_task(self._upstream(call, twilio, api))
            downstream = asyncio.create_task(self._downstream(call, twilio, api))
            done, _ = await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
            if upstream in done:  # the caller hung up: give the API a moment to answer ``end`` with ``ended``
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(downstream), 5.0)
            else:  # the API ended the call: Twilio's socket closes, the upstream pump ends with it
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(upstream), 5.0)
            for task in (upstream, downstream):
                task.cancel()
            await asyncio.gather(upstream, downstream, return_exceptions=True)
        await twilio.close()
        self.bad_messages += call.bad_messages
        log.info("call %s ended (barge-ins: %d, bad messages: %d)", call.call_sid, call.barge_ins, call.bad_messages)

    async def _wait_for_start(self, twilio: ServerConnection) -> tm.Start | None:
        try:
            async with asyncio.timeout(self.config.start_timeout_s):
                async for raw in twilio:
                    try:
                        message = tm.parse(raw)
                    except tm.BadMessage as exc:
                        self.bad_messages += 1
                        log.warning("bad message before start: %s", exc)
                        continue
                    if isinstance(message, tm.Start):
                        return message
                    if isinstance(message, tm.Stop):
                        return None
        except (TimeoutError, ConnectionClosed):
            return None
        return None

    async def _upstream(self, call: MediaCall, twilio: ServerConnection, api: ClientConnection) -> None:
        """Twilio -> API, until Twilio's ``stop`` or close (then ``end`` goes to the API)."""
        try:
            async for raw in twilio:
                try:
                    message = tm.parse(raw)
                except tm.BadMessage as exc:
                    call.bad_messages += 1
                    log.warning("call %s: bad message from Twilio: %s", call.call_sid, exc)
                    continue
                out = call.from_twilio(message)
                await self._send(call, twilio, api, out)
                if isinstance(message, tm.Stop):
                    return
                if out.ended and call.ended:  # the last mark of the call: the caller heard the goodbye
                    await twilio.close()
                    return
        except ConnectionClosed:
            pass
        if not call.ended and not call.stopped:  # Twilio went away without ``stop``: the caller is gone
            with contextlib.suppress(ConnectionClosed):
                await api.send(json.dumps({"action": "end"}))

    async def _downstream(self, call: MediaCall, twilio: ServerConnection, api: ClientConnection) -> None:
        """API -> Twilio, until ``ended`` (then the caller hears the rest and the stream closes) or the API closes."""
        try:
            async for raw in api:
                try:
                    frame = json.loads(raw)
                except ValueError:
                    call.bad_messages += 1
                    continue
                if not isinstance(frame, dict):
                    call.bad_messages += 1
                    continue
                if frame.get("type") == "error":
                    log.warning("call %s: API error %s: %s", call.call_sid, frame.get("code"), frame.get("message"))
                await self._send(call, twilio, api, call.from_api(frame))
                if call.ended:
                    break
        except ConnectionClosed:
            pass
        if call.stopped:
            return
        # Let the caller hear what was sent: the upstream pump closes the stream at the ``end`` mark's echo.
        grace = min(self.config.end_grace_s, call.unplayed_ms() / 1000 + 2.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(twilio.wait_closed(), grace)
        await twilio.close()

    @staticmethod
    async def _send(call: MediaCall, twilio: ServerConnection, api: ClientConnection, out: Outcome) -> None:
        with contextlib.suppress(ConnectionClosed):
            for message in out.twilio:
                await twilio.send(message)
        with contextlib.suppress(ConnectionClosed):
            for frame in out.api:
                await api.send(json.dumps(frame, separators=(",", ":")))

    # -- serving ---------------------------------------------------------------------------------------------------
    async def start(self) -> Server:
        self.server = await serve(
            self.handle,
            self.config.host,
            self.config.port,
            process_request=self.process_request,
            max_size=tm.MAX_MESSAGE_BYTES,
        )
        return self.server

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = next(iter(self.server.sockets)).getsockname()[1]
        return port

    async def serve_forever(self) -> None:
        server = await self.start()
        stop = asyncio.get_running_loop().create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):  # ECS stops a task with SIGTERM: drain, then exit
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread (make run)
                asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
        log.info("media bridge on %s:%d%s -> %s", self.config.host, self.port, self.config.path, self.config.api_ws_url)
        await stop
        server.close(close_connections=False)  # new calls go to other tasks; calls in flight finish
        await server.wait_closed()
