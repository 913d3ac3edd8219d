"""The local stack (``make run``): the same FastAPI app as ApiFunction under uvicorn, AWS through moto, no Docker.

    python -m airies.local.server          # http://127.0.0.1:8000 (PORT overrides)

Steps: environment of ApiFunction from template.yaml + infra/env/local.json (the shell's variables win) ->
moto server on a free port (AWS_ENDPOINT_URL + fake credentials for this process) -> every template resource with a
local creator (buckets, queues, tables, state machines: ``airies.local.template.local_resource``) -> S3 objects kept
under <data_dir>/s3 put back (``airies.local.s3_store``: every later S3 write is kept there too) -> migrate to head
-> dev account (key from AIRIES_DEV_API_KEY, else generated once and kept in .data/dev_api_key) -> extensions ->
uvicorn on 127.0.0.1.

Extension points for other capabilities (keep them small, in your own modules under airies/local/: every module
there other than invoke/server/template is imported at start-up, so its registrations run):
- ``@local_resource("AWS::...")`` in airies/local/template.py: create a new resource type under moto.
- ``@on_startup`` here: start background workers (event-source pollers, schedulers) once the stack is up;
  they get the :class:`LocalStack` and must stop when ``stack.stopping`` is set.
- WebSocket: the conversations capability provides ``airies/local/ws_gateway.py`` with ``mount(app, stack)``;
  :func:`mount_extensions` calls it to serve the voice WebSocket at ``/ws`` (same handlers as the WebSocket API).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import pkgutil
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from aws_lambda_powertools import Logger

import airies.local as local_package
from airies.accounts.service import AccountService
from airies.api.app import create_app
from airies.billing.usage import build_usage_service
from airies.core.config import Settings
from airies.core.database import get_database
from airies.local.invoke import kept_api_key, log_as_function
from airies.local.s3_store import LocalMotoServer, S3Mirror
from airies.local.template import (
    DEFAULT_ENV_FILE,
    DEFAULT_TEMPLATE,
    LocalContext,
    create_local_resources,
    function_environment,
    function_specs,
    load_env_file,
    load_template,
)
from airies.local.ws_gateway import UVICORN_WS
from airies.migrations.runner import upgrade_head

API_FUNCTION = "ApiFunction"
# The dev account's billing tier: Pro allows 20 concurrent conversations and 50,000 minutes a month, needs no
# minimum balance to start a call and has an overdraft, so local calls (several at once, a dropped one still in its
# resume window) are not refused by the Free tier's single conversation.
DEV_ACCOUNT_PLAN = "pro"
WEBSOCKET_EXTENSION = "airies.local.ws_gateway"  # module with mount(app, stack): the voice WebSocket at /ws


@dataclass
class LocalStack:
    """What extensions need to know about the running local stack."""

    settings: Any
    database: Any
    context: LocalContext  # template + local names of resources
    aws_endpoint_url: str
    api_key: str
    port: int
    stopping: threading.Event = field(default_factory=threading.Event)
    moto_server: Any = None


StartupHook = Callable[[LocalStack], None]
STARTUP_HOOKS: list[StartupHook] = []


CORE_MODULES = {"invoke", "s3_store", "server", "template"}


def load_extensions() -> list[str]:
    """Import every other module of ``airies.local`` so its ``@on_startup`` / ``@local_resource`` registrations run."""
    loaded = []
    for info in sorted(pkgutil.iter_modules(local_package.__path__), key=lambda item: item.name):
        if info.name in CORE_MODULES or info.name.startswith("_"):
            continue
        importlib.import_module(f"{local_package.__name__}.{info.name}")  # errors surface: never silently skipped
        loaded.append(info.name)
    return loaded


def on_startup(hook: StartupHook) -> StartupHook:
    """Register a function run once the stack is up (before uvicorn starts serving)."""
    STARTUP_HOOKS.append(hook)
    return hook


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def apply_environment(env: dict[str, str | None]) -> None:
    """Template + env-file values for keys the shell did not set (DATABASE_URL, PORT etc. from the shell win)."""
    for key, value in env.items():
        if key in os.environ:
            continue
        if value is not None:
            os.environ[key] = value


def start_moto() -> tuple[LocalMotoServer, str]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request access log drowns ours
    port = free_port()
    server = LocalMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        os.environ[key] = value
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)
    os.environ.setdefault("AWS_DEFAULT_REGION", os.environ.get("AWS_REGION", "us-east-1"))
    return server, endpoint


def dev_api_key(data_dir: Path) -> str:
    """AIRIES_DEV_API_KEY, else the key kept in <data_dir>/dev_api_key (generated on first run, mode 0600)."""
    return os.environ.get("AIRIES_DEV_API_KEY") or kept_api_key(data_dir / "dev_api_key")


def mount_extensions(app: Any, stack: LocalStack) -> list[str]:
    """Mount optional local-only endpoints (the voice WebSocket at /ws once its module exists)."""
    mounted = []
    if importlib.util.find_spec(WEBSOCKET_EXTENSION) is not None:
        module = importlib.import_module(WEBSOCKET_EXTENSION)  # import errors surface: never silently skipped
        module.mount(app, stack)
        mounted.append("/ws")
    return mounted


def build_stack(
    *,
    port: int,
    template_path: Path | str = DEFAULT_TEMPLATE,
    env_file: Path | str = DEFAULT_ENV_FILE,
) -> tuple[Any, LocalStack]:
    """Everything but serving: returns (ASGI app, stack)."""
    load_extensions()
    template = load_template(template_path)
    env_data = load_env_file(env_file)
    spec = function_specs(template, root=Path(template_path).resolve().parent)[API_FUNCTION]

    os.environ.setdefault("AIRIES_DB_POOL_SIZE", "5")  # uvicorn serves sync routes from a thread pool
    os.environ.setdefault("AIRIES_DB_MAX_OVERFLOW", "10")
    os.environ.setdefault("AIRIES_PUBLIC_API_URL", f"http://127.0.0.1:{port}")
    os.environ.setdefault("AIRIES_PUBLIC_WS_URL", f"ws://127.0.0.1:{port}/ws")
    moto_server, endpoint = start_moto()
    context = LocalContext(
        template=template,
        env_file=env_data,
        region=os.environ["AWS_DEFAULT_REGION"],
        endpoint_url=endpoint,
        root=Path(template_path).resolve().parent,
    )
    apply_environment(function_environment(spec, context))
    created = create_local_resources(context)

    settings = Settings()
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    # S3 survives a restart like the database: the kept objects go back before any bucket notification is set up
    # (no ingestion event fires for them), then every write is kept.
    mirror = S3Mirror(data_dir / "s3", endpoint, context.region)
    restored = mirror.restore()
    moto_server.mirror = mirror
    url = settings.resolved_database_url()
    upgrade_head(url)
    database = get_database(settings)

    key = dev_api_key(data_dir)
    with database.session() as session:
        account = AccountService(session).ensure_dev_account(key)
        account_id = account.id
        build_usage_service(settings).set_tier(account_id, DEV_ACCOUNT_PLAN, session=session)  # idempotent

    app = create_app(settings, database, logger=Logger(service=settings.service_name))
    log_as_function(app, spec, context.region)  # the pollers' functions share this process and its loggers
    stack = LocalStack(
        settings=settings,
        database=database,
        context=context,
        aws_endpoint_url=endpoint,
        api_key=key,
        port=port,
        moto_server=moto_server,
    )
    app.state.dev_api_key = key  # the web app's one-click sign-in (stage local only)
    mounted = mount_extensions(app, stack)
    for hook in STARTUP_HOOKS:
        hook(stack)

    safe_url = database.engine.url.render_as_string(hide_password=True)
    print(
        "\n".join(
            [
                "",
                "Airies local stack",
                f"  web app     http://127.0.0.1:{port}/   (sign in with the dev key: one click)",
                f"  API         http://127.0.0.1:{port}{settings.api_base_path}   (docs: {settings.api_base_path}/docs)",
                f"  WebSocket   {f'ws://127.0.0.1:{port}/ws' if mounted else 'not mounted yet (conversations)'}",
                f"  database    {safe_url}",
                f"  AWS (moto)  {endpoint}   resources: {', '.join(created) or 'none'}",
                f"  S3 objects  kept in {data_dir / 's3'} ({restored} restored)",
                f"  dev account {account_id} (plan {DEV_ACCOUNT_PLAN})",
                f"  dev API key {key}",
                "",
                f'  curl -H "Authorization: Bearer {key}" http://127.0.0.1:{port}{settings.api_base_path}/agents',
                "",
            ]
        ),
        flush=True,
    )
    return app, stack


def main() -> int:
    port = int(os.environ.get("PORT", "8000"))
    app, stack = build_stack(port=port)
    try:
        log_level = os.environ.get("AIRIES_UVICORN_LOG_LEVEL", "info")
        uvicorn.run(app, host="127.0.0.1", port=port, log_level=log_level, ws=UVICORN_WS)
    finally:
        stack.stopping.set()
        if stack.moto_server is not None:
            stack.moto_server.stop()
        stack.database.dispose()
    return 0


if __name__ == "__main__":
    # Run the canonical module, not __main__: extensions register into airies.local.server's STARTUP_HOOKS.
    from airies.local import server as _server

    sys.exit(_server.main())
