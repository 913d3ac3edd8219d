"""The local stand-in for API Gateway's WebSocket API: ``ws://127.0.0.1:8000/ws``.

It runs the SAME Lambda handlers as AWS (``functions/voice_ws``) with API Gateway-shaped events:
``$connect`` before the handshake is accepted (a non-200 refuses it with that HTTP status), one invocation
per client frame, concurrently, on a thread pool (as API Gateway does; barge-in depends on it), and
``$disconnect`` when the socket closes. Route selection follows ``$request.body.action``.

The handlers post back through boto3's ``apigatewaymanagementapi`` client; this module serves that API at
``/ws-management/@connections/{id}`` (POST = post_to_connection, DELETE = delete_connection, GET), answering
410 GoneException for sockets that are gone, exactly what the handlers see on AWS.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.websockets import WebSocket

from airies.accounts.service import AccountService
from airies.agents.schemas import AgentCreate
from airies.agents.service import AgentService
from airies.conversations.live import WebSocketService
from airies.conversations.schemas import ConversationCreate
from airies.conversations.service import ConversationService
from airies.conversations.sessions import build_session_store
from airies.core.config import PROJECT_ROOT, Settings
from airies.core.database import Database
from airies.local.invoke import LambdaContext
from airies.local.template import function_specs, load_template
from airies.webhooks.service import build_webhook_publisher

# uvicorn's WebSocket implementation for the local stack. wsproto completes a refused handshake once the denial
# response (status + JSON body) is sent; uvicorn's default websockets-sansio protocol sends the same response but
# then logs "ASGI callable returned without completing handshake" at ERROR for every refusal.
UVICORN_WS = "wsproto"
NAMED_ROUTES = {"audio", "interrupt"}  # the template's named routes; everything else is $default
FUNCTIONS = {"$connect": "connect", "$disconnect": "disconnect", "$default": "default"}
MANAGEMENT_PATH = "/ws-management"

Dispatch = Callable[[str, dict[str, Any]], dict[str, Any]]


def load_voice_handlers(code_dir: Path | None = None) -> Dispatch:
    """Import functions/voice_ws/{connect,default,disconnect}.py once (one warm "container") and route to them.

    Each invocation gets its function's Lambda context: its name, memory and a clock counting down its timeout from
    the template, so a turn is cut at the deadline it would be on AWS."""
    code_dir = (code_dir or PROJECT_ROOT / "functions" / "voice_ws").resolve()
    functions = {
        spec.module_path.stem: spec
        for spec in function_specs(load_template()).values()
        if spec.code_uri.resolve() == code_dir
    }
    if str(code_dir) not in sys.path:
        sys.path.insert(0, str(code_dir))
    handlers: dict[str, Callable[..., Any]] = {}
    for name in ("connect", "default", "disconnect"):
        spec = importlib.util.spec_from_file_location(f"_airies_voice_ws_{name}", code_dir / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        handlers[name] = module.handler

    def dispatch(route: str, event: dict[str, Any]) -> dict[str, Any]:
        function = FUNCTIONS.get(route, "default")
        return handlers[function](event, LambdaContext(functions[function]))

    return dispatch


@dataclass
class _Connection:
    websocket: Any
    connected_at: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    source_ip: str = "127.0.0.1"
    last_active: float = field(default_factory=time.time)


class LocalWsGateway:
    def __init__(
        self,
        dispatch: Dispatch | None = None,
        *,
        stage: str = "local",
        api_id: str = "localws",
        max_workers: int = 32,
        domain: str = "127.0.0.1:8000",
    ) -> None:
        self._dispatch = dispatch
        self.stage = stage
        self.api_id = api_id
        self.domain = domain
        self.connections: dict[str, _Connection] = {}
        self.pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ws-lambda")
        self.invocations: dict[str, int] = {"$connect": 0, "$disconnect": 0, "$default": 0, "audio": 0, "interrupt": 0}
        # boto3 signs management calls; the local stack has no real credentials and needs none.
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "local")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local")

    @property
    def dispatch(self) -> Dispatch:
        if self._dispatch is None:
            self._dispatch = load_voice_handlers()
        return self._dispatch

    def mount(self, app: Any, path: str = "/ws") -> None:
        """Add the WebSocket endpoint and the management API to a FastAPI/Starlette app."""
        app.add_api_websocket_route(path, self.endpoint)
        route = f"{MANAGEMENT_PATH}/@connections/{{connection_id}}"
        app.add_api_route(route, self.post_to_connection, methods=["POST"], include_in_schema=False)
        app.add_api_route(route, self.delete_connection, methods=["DELETE"], include_in_schema=False)
        app.add_api_route(route, self.get_connection, methods=["GET"], include_in_schema=False)

    # -- events --------------------------------------------------------------------------------------------------
    def _context(self, route: str, event_type: str, connection_id: str, connected_at: float) -> dict[str, Any]:
        now = time.time()
        request_id = uuid.uuid4().hex
        return {
            "routeKey": route,
            "eventType": event_type,
            "messageDirection": "IN",
            "messageId": uuid.uuid4().hex[:16],
            "connectionId": connection_id,
            "connectedAt": int(connected_at * 1000),
            "requestTimeEpoch": int(now * 1000),
            "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "requestId": request_id,
            "extendedRequestId": request_id,
            "domainName": self.domain,
            "stage": self.stage,
            "apiId": self.api_id,
            "identity": {"sourceIp": "127.0.0.1"},
        }

    async def _invoke(self, route: str, event: dict[str, Any]) -> dict[str, Any]:
        self.invocations[route] = self.invocations.get(route, 0) + 1
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self.dispatch, route, event)

    @staticmethod
    def route_for(body: str) -> str:
        try:
            action = json.loads(body).get("action")
        except (ValueError, AttributeError):
            return "$default"
        return action if action in NAMED_ROUTES else "$default"

    async def endpoint(self, websocket: WebSocket) -> None:
        from starlette.websockets import WebSocketDisconnect

        # API Gateway ids look like "L0SM9cOFvHcCIhw=": alphanumerics plus "=", safe in the management URL.
        connection_id = "".join(c for c in base64.b64encode(uuid.uuid4().bytes).decode() if c.isalnum())[:15] + "="
        connected_at = time.time()
        headers = dict(websocket.headers)
        event = {
            "headers": headers,
            "multiValueHeaders": {k: [v] for k, v in headers.items()},
            "queryStringParameters": dict(websocket.query_params) or None,
            "requestContext": self._context("$connect", "CONNECT", connection_id, connected_at),
            "isBase64Encoded": False,
        }
        result = await self._invoke("$connect", event)
        status = int(result.get("statusCode", 500)) if isinstance(result, dict) else 500
        if status != 200:
            await self._deny(websocket, status, result.get("body") if isinstance(result, dict) else None)
            return
        await websocket.accept()
        self.connections[connection_id] = _Connection(websocket, connected_at)
        pending: set[asyncio.Future[Any]] = set()
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                body = message.get("text")
                is_b64 = False
                if body is None and message.get("bytes") is not None:
                    body, is_b64 = base64.b64encode(message["bytes"]).decode(), True
                route = self.route_for(body or "") if not is_b64 else "$default"
                frame = {
                    "requestContext": self._context(route, "MESSAGE", connection_id, connected_at),
                    "body": body,
                    "isBase64Encoded": is_b64,
                }
                task = asyncio.ensure_future(self._invoke(route, frame))
                pending.add(task)
                task.add_done_callback(pending.discard)
        except WebSocketDisconnect:
            pass
        finally:
            self.connections.pop(connection_id, None)
            context = self._context("$disconnect", "DISCONNECT", connection_id, connected_at)
            context["disconnectStatusCode"] = 1000
            context["disconnectReason"] = "Client closed the connection"
            event = {
                "headers": headers,
                "multiValueHeaders": {k: [v] for k, v in headers.items()},
                "requestContext": context,
                "isBase64Encoded": False,
            }
            await self._invoke("$disconnect", event)

    async def _deny(self, websocket: Any, status: int, body: str | None) -> None:
        """Refuse the handshake as API Gateway does: an HTTP response with the handler's status and JSON body
        (the ASGI WebSocket denial response; every server the local stack runs on supports it)."""
        from starlette.responses import Response

        await websocket.send_denial_response(Response(body or "", status_code=status, media_type="application/json"))

    # -- management API --------------------------------------------------------------------------------------------
    @staticmethod
    def _gone(connection_id: str) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse(
            {"message": f"connection {connection_id} is gone"},
            status_code=410,
            headers={"x-amzn-ErrorType": "GoneException"},
        )

    async def post_to_connection(self, connection_id: str, request: Request) -> Any:
        from starlette.responses import Response

        conn = self.connections.get(connection_id)
        if conn is None:
            return self._gone(connection_id)
        data = await request.body()
        try:
            async with conn.lock:
                await conn.websocket.send_text(data.decode("utf-8"))
        except Exception:  # the socket died between lookup and send
            self.connections.pop(connection_id, None)
            return self._gone(connection_id)
        return Response(status_code=200)

    async def delete_connection(self, connection_id: str) -> Any:
        from starlette.responses import Response

        conn = self.connections.pop(connection_id, None)
        if conn is None:
            return self._gone(connection_id)
        try:
            async with conn.lock:
                await conn.websocket.close(code=1000)
        except Exception:
            pass
        return Response(status_code=204)

    async def get_connection(self, connection_id: str) -> Any:
        from starlette.responses import JSONResponse

        conn = self.connections.get(connection_id)
        if conn is None:
            return self._gone(connection_id)
        return JSONResponse(
            {
                "ConnectedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(conn.connected_at)),
                "Identity": {"SourceIp": conn.source_ip},
                "LastActiveAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(conn.last_active)),
            }
        )


def mount_ws_gateway(app: Any, dispatch: Dispatch | None = None, path: str = "/ws") -> LocalWsGateway:
    """The hook ``airies.local.server`` calls: serve the voice WebSocket protocol on the local stack."""
    gateway = LocalWsGateway(dispatch)
    gateway.mount(app, path)
    app.state.ws_gateway = gateway
    return gateway


def mount(app: Any, stack: Any) -> LocalWsGateway:
    """``airies.local.server`` extension: the voice WebSocket at /ws plus a local schedule for the sweeper."""
    gateway = mount_ws_gateway(app)
    gateway.domain = f"127.0.0.1:{stack.port}"

    def sweep_forever() -> None:
        service = WebSocketService(
            stack.settings,
            stack.database,
            build_session_store(stack.settings),
            publisher=build_webhook_publisher(stack.settings, stack.database),
        )
        while not stack.stopping.wait(15):  # EventBridge runs it every minute on AWS; sooner here is harmless
            try:
                service.sweep()
            except Exception as exc:  # keep the schedule alive, like EventBridge would retry next minute
                print(f"sweeper: {exc!r}", file=sys.stderr)

    threading.Thread(target=sweep_forever, name="voice-sweeper", daemon=True).start()
    return gateway


def sample_conversation(sample: Any) -> dict[str, str]:
    """Sample-event setup (infra/events/VoiceConnectFunction.valid-token.meta.json): a deployed agent and a
    started conversation; returns ``{{conversation_id}}`` and ``{{token}}`` signed with the event's token secret."""
    settings = Settings(ws_token_secret=sample.env.get("AIRIES_WS_TOKEN_SECRET"))
    database = Database(sample.database_url)
    try:
        with database.session() as session:
            account, _ = AccountService(session).signup(
                name="Sample events", email=f"sample-{uuid.uuid4().hex[:10]}@example.com"
            )
            agents = AgentService(session)
            agent = agents.create(
                account.id,
                AgentCreate(
                    name="Sample",
                    first_message="Hello!",
                    voice={"provider": "espeak", "voice_id": "en-us"},
                    transcriber={"provider": "pocketsphinx", "model": "en-us"},
                ),
            )
            agents.deploy(account.id, agent.id)
            conversation, token, _ = ConversationService(session, settings).start_conversation(
                account.id, ConversationCreate(agent_id=agent.id)
            )
            return {"conversation_id": conversation.id, "token": token}
    finally:
        database.dispose()
