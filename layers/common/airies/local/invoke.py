"""``sam local invoke`` without Docker: run a function of template.yaml in this Python process.

    python -m airies.local.invoke ApiFunction --event infra/events/ApiFunction.health.json [--env-file infra/env/local.json]

It reads template.yaml, takes the function's CodeUri + Handler, applies Globals and the function's env (intrinsics
resolved to local values, then the env file), puts the layer directories and CodeUri on ``sys.path``, loads the handler
file under a unique module name (every capability has a ``handler.py``), builds a Lambda context and prints the result.

Sample events may carry a sidecar ``<event>.meta.json`` that says what they need (see :class:`EventMeta` and
docs/operations.md, "The local invoker"): a migrated database, moto with the template's resources, setup callables
that create data and fill ``{{placeholders}}`` in the event, and the expected result.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import itertools
import json
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from airies.accounts.models import Account, ApiKey
from airies.accounts.service import AccountService, generate_key, hash_key
from airies.core import bootstrap
from airies.core import database as engine
from airies.core.config import PROJECT_ROOT, get_settings
from airies.core.database import Database
from airies.local.moto_lock import linearize_in_process_moto
from airies.local.template import (
    DEFAULT_ENV_FILE,
    DEFAULT_TEMPLATE,
    FunctionSpec,
    LocalContext,
    create_local_resources,
    function_environment,
    function_specs,
    load_env_file,
    load_template,
)
from airies.migrations.runner import upgrade_head

EVENTS_DIR = PROJECT_ROOT / "infra" / "events"
_counter = itertools.count(1)


class LambdaContext:
    """The attributes Powertools and our handlers read from the Lambda context object."""

    def __init__(self, spec: FunctionSpec, region: str = "us-east-1") -> None:
        self.function_name = f"airies-local-{spec.logical_id}"
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{region}:123456789012:function:{self.function_name}"
        self.memory_limit_in_mb = spec.memory_size
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = time.strftime("%Y/%m/%d/[$LATEST]") + uuid.uuid4().hex
        self.identity = None
        self.client_context = None
        self._deadline = time.monotonic() + spec.timeout

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class LambdaLogContext:
    """Pure ASGI middleware of the local stack: each HTTP request logs as one invocation of ``spec``'s function.

    On AWS, ApiFunction's ``inject_lambda_context`` adds its context to every log line. ``make run`` serves the API
    and every polled function from one process, and Powertools loggers of one service share their appended keys: the
    keys of whichever function a poller invoked last would be on the API's logs. Powertools' thread-safe keys
    (a context variable, copied into the threads that serve sync routes) override the shared ones per request.
    """

    def __init__(self, app: Any, spec: FunctionSpec, region: str) -> None:
        self.app = app
        self.spec = spec
        self.region = region
        self.cold = True

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from aws_lambda_powertools.logging.formatter import set_context_keys
        from aws_lambda_powertools.logging.lambda_context import build_lambda_context_model

        keys = build_lambda_context_model(LambdaContext(self.spec, self.region)).__dict__
        cold, self.cold = self.cold, False
        # Not reset afterwards: the server's error handler logs outside this middleware, in the same task; the
        # server runs each request in a task of its own, so the keys end with it.
        context: dict[str, Any] = {**keys, "cold_start": cold}
        set_context_keys(**context)
        await self.app(scope, receive, send)


def log_as_function(app: Any, spec: FunctionSpec, region: str) -> None:
    """Make ``app``'s request logs carry ``spec``'s Lambda context (see :class:`LambdaLogContext`)."""
    app.add_middleware(LambdaLogContext, spec=spec, region=region)


# --------------------------------------------------------------------------------------------------------------------
# Environment and module loading
# --------------------------------------------------------------------------------------------------------------------

# Per-container caches in the package: a local "cold start" clears them so each invoke sees its own env.
CONTAINER_CACHES: list[Callable[[], None]] = []


def _clear_container_caches() -> None:
    get_settings.cache_clear()
    cached = getattr(engine, "_databases", None)  # url -> Database, one per container
    if isinstance(cached, dict):
        for database in cached.values():
            database.dispose()
        cached.clear()
    elif hasattr(engine.get_database, "cache_clear"):
        engine.get_database.cache_clear()
    for clear in CONTAINER_CACHES:
        clear()


@contextlib.contextmanager
def patched_environ(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set ``values`` for the invocation, then put back the keys it changed, one by one: the environment is never
    cleared, because other threads of ``make run`` (the voice handlers) read it meanwhile.

    Invocations overlap (a state machine's tasks, the local gateway's frames run on threads): a key goes back to the
    value it had before the first of the overlapping patches that set it, once the last of them ends, so no value set
    for one invocation outlives them all."""
    with _ENV_LOCK:
        for key, value in values.items():
            if _ENV_DEPTH.get(key, 0) == 0:
                _ENV_BEFORE[key] = os.environ.get(key)
            _ENV_DEPTH[key] = _ENV_DEPTH.get(key, 0) + 1
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        yield
    finally:
        with _ENV_LOCK:
            for key in values:
                _ENV_DEPTH[key] -= 1
                if _ENV_DEPTH[key] > 0:
                    continue
                del _ENV_DEPTH[key]
                before = _ENV_BEFORE.pop(key)
                if before is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = before


_ENV_LOCK = threading.Lock()
_ENV_DEPTH: dict[str, int] = {}  # key -> patches that set it and have not ended
_ENV_BEFORE: dict[str, str | None] = {}  # key -> its value before the first of them


def _purge_modules_under(code_dir: str) -> None:
    for mod_name, module in list(sys.modules.items()):
        mod_file = getattr(module, "__file__", None) or ""
        if mod_file.startswith(code_dir + os.sep) and not mod_name.startswith("_airies_fn_"):
            del sys.modules[mod_name]


def load_handler(spec: FunctionSpec) -> tuple[Callable[[Any, Any], Any], Any]:
    """Import the handler file as a fresh module (module-level init runs: a cold start). Returns (handler, module)."""
    path = spec.module_path
    if not path.exists():
        raise FileNotFoundError(f"{spec.logical_id}: handler file {path} does not exist")
    extra_paths = [str(p) for p in (*spec.layer_dirs, spec.code_uri)]
    code_dir = str(spec.code_uri)
    # A cold start: sibling modules of this CodeUri imported earlier (by another load, a test, the local server)
    # must not be reused with their old module-level state (clients, settings, endpoints).
    _purge_modules_under(code_dir)
    for entry in reversed(extra_paths):
        if entry in sys.path:
            sys.path.remove(entry)
        sys.path.insert(0, entry)
    try:
        name = f"_airies_fn_{spec.logical_id}_{next(_counter)}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
    except BaseException:
        bootstrap.init_done()  # the module paused the garbage collector for its init and did not get to resume it
        raise
    finally:
        # Sibling modules of this CodeUri must not shadow another function's siblings of the same name.
        _purge_modules_under(code_dir)
        if code_dir in sys.path:
            sys.path.remove(code_dir)
    handler = getattr(module, spec.function_name, None)
    if not callable(handler):
        raise AttributeError(f"{spec.logical_id}: {path} has no callable {spec.function_name!r}")
    return handler, module


def resolve_function(
    logical_id: str, template_path: Path | str = DEFAULT_TEMPLATE, env_file: Path | str | None = DEFAULT_ENV_FILE
) -> tuple[FunctionSpec, LocalContext]:
    template = load_template(template_path)
    specs = function_specs(template, root=Path(template_path).resolve().parent)
    if logical_id not in specs:
        raise KeyError(f"{logical_id} is not an AWS::Serverless::Function in {template_path}; have: {sorted(specs)}")
    ctx = LocalContext(
        template=template,
        env_file=load_env_file(env_file),
        region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL"),
        root=Path(template_path).resolve().parent,
    )
    return specs[logical_id], ctx


def invoke_function(
    logical_id: str,
    event: dict[str, Any],
    env: dict[str, str | None] | None = None,
    *,
    template_path: Path | str = DEFAULT_TEMPLATE,
    env_file: Path | str | None = DEFAULT_ENV_FILE,
) -> Any:
    """Cold-start the function in-process with its template env (+ env file, + ``env``) and invoke it once.

    The process environment is restored afterwards; module-level state of the handler is discarded.
    """
    spec, ctx = resolve_function(logical_id, template_path, env_file)
    values = function_environment(spec, ctx)
    values.update(env or {})
    with patched_environ(values):
        _clear_container_caches()
        try:
            handler, module = load_handler(spec)
            result = handler(event, LambdaContext(spec, ctx.region))
            app = getattr(module, "app", None)  # release pooled DB connections of this "container"
            database = getattr(getattr(app, "state", None), "database", None)
            if database is not None:
                database.dispose()
            return result
        finally:
            _clear_container_caches()


# --------------------------------------------------------------------------------------------------------------------
# Sample events and their sidecars
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class EventMeta:
    """``<event>.meta.json``: what a sample event needs. Every key is optional.

    - ``needs``: ``"database"`` (a migrated database; DATABASE_URL is set), ``"aws"`` (moto with every resource of
      template.yaml that has a local creator).
    - ``setup``: ``["module:callable", ...]``; each is called with a :class:`SampleContext` and returns a dict of
      placeholder values substituted for ``{{name}}`` in the event's strings (e.g. ``{{api_key}}``).
    - ``env``: extra environment variables for this event.
    - ``expect``: a subset the result must match, e.g. ``{"statusCode": 200}``. Without it an HTTP result
      (one with ``statusCode``) must be < 500 and any other result must simply not raise.
    """

    needs: list[str] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    expect: dict[str, Any] | None = None
    description: str = ""

    @classmethod
    def for_event(cls, event_path: Path) -> EventMeta:
        sidecar = event_path.with_name(event_path.name.removesuffix(".json") + ".meta.json")
        if not sidecar.exists():
            return cls()
        data = json.loads(sidecar.read_text(encoding="utf-8"))
        unknown = set(data) - {"needs", "setup", "env", "expect", "description"}
        if unknown:
            raise ValueError(f"{sidecar}: unknown keys {sorted(unknown)}")
        return cls(
            needs=list(data.get("needs", [])),
            setup=list(data.get("setup", [])),
            env=dict(data.get("env", {})),
            expect=data.get("expect"),
            description=str(data.get("description", "")),
        )


@dataclass
class SampleContext:
    logical_id: str
    database_url: str | None
    env: dict[str, str | None]


def sample_events(logical_id: str, events_dir: Path = EVENTS_DIR) -> list[Path]:
    return sorted(
        path
        for path in events_dir.glob(f"{logical_id}*.json")
        if not path.name.endswith(".meta.json")
        if path.name == f"{logical_id}.json" or path.name[len(logical_id)] in "._-"
    )


def _substitute(value: Any, placeholders: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, replacement in placeholders.items():
            value = value.replace("{{" + key + "}}", replacement)
        return value
    if isinstance(value, list):
        return [_substitute(item, placeholders) for item in value]
    if isinstance(value, dict):
        return {key: _substitute(item, placeholders) for key, item in value.items()}
    return value


_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def placeholders_in(event: Any) -> list[str]:
    """The ``{{name}}`` placeholders of an event, in order of appearance (each once)."""
    return list(dict.fromkeys(_PLACEHOLDER.findall(json.dumps(event))))


def _call(dotted: str) -> Callable[[SampleContext], dict[str, str]]:
    module_name, _, attr = dotted.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def check_result(result: Any, meta: EventMeta) -> None:
    """Raise AssertionError when the result does not meet the sidecar's expectation (or the default one)."""
    if meta.expect is not None:
        mismatched = {
            key: (value, result.get(key) if isinstance(result, dict) else None)
            for key, value in meta.expect.items()
            if not isinstance(result, dict) or result.get(key) != value
        }
        if mismatched:
            raise AssertionError(f"result does not match expect (want, got): {mismatched}; result: {result!r:.2000}")
    elif isinstance(result, dict) and "statusCode" in result and int(result["statusCode"]) >= 500:
        raise AssertionError(f"HTTP {result['statusCode']}: {result.get('body')!r:.2000}")


def run_sample_event(
    logical_id: str,
    event_path: Path,
    *,
    database_url: str | None = None,
    env_file: Path | str | None = DEFAULT_ENV_FILE,
    template_path: Path | str = DEFAULT_TEMPLATE,
    check: bool = True,
) -> Any:
    """Prepare what the event's sidecar asks for, invoke, check the expectation (unless ``check=False``).

    ``database_url``: the database for ``needs: database`` (migrated here); defaults to the local settings' URL.
    ``needs: aws`` runs the invoke inside ``moto.mock_aws`` unless AWS_ENDPOINT_URL points at a running moto server.
    """
    meta = EventMeta.for_event(event_path)
    event = json.loads(event_path.read_text(encoding="utf-8"))
    env: dict[str, str | None] = dict(meta.env)
    with contextlib.ExitStack() as stack:
        if "database" in meta.needs:
            if database_url is None:
                spec, ctx = resolve_function(logical_id, template_path, env_file)
                with patched_environ(function_environment(spec, ctx)):
                    _clear_container_caches()
                    database_url = get_settings().resolved_database_url()
                    _clear_container_caches()
            upgrade_head(database_url)
            env["DATABASE_URL"] = database_url
        if "aws" in meta.needs:
            if not os.environ.get("AWS_ENDPOINT_URL"):
                from moto import mock_aws  # moto is not in the functions' layers (the layer firewall runs this)

                linearize_in_process_moto()
                stack.enter_context(patched_environ(_FAKE_AWS))
                stack.enter_context(mock_aws())
            _, ctx = resolve_function(logical_id, template_path, env_file)
            create_local_resources(ctx)
        placeholders: dict[str, str] = {}
        sample = SampleContext(logical_id=logical_id, database_url=database_url, env=env)
        if meta.setup:  # setup sees the environment the handler will see
            spec, ctx = resolve_function(logical_id, template_path, env_file)
            with patched_environ({**function_environment(spec, ctx), **env}):
                _clear_container_caches()
                try:
                    for dotted in meta.setup:
                        placeholders.update(_call(dotted)(sample))
                finally:
                    _clear_container_caches()
        event = _substitute(event, placeholders)
        result = invoke_function(logical_id, event, env, template_path=template_path, env_file=env_file)
    if check:
        check_result(result, meta)
    return result


_FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
}


# Setup callables for sidecars ----------------------------------------------------------------------------------------


def setup_unique(_sample: SampleContext) -> dict[str, str]:
    """``{{unique}}``: a random token, for values that must not collide across runs (emails)."""
    return {"unique": uuid.uuid4().hex[:12]}


SAMPLE_ACCOUNT_EMAIL = "sample-events@airies.local"


def kept_api_key(path: Path) -> str:
    """An API key generated once and kept in ``path`` (mode 0600), the same at every later call."""
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    key = generate_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(key + "\n")
    return key


def setup_account(sample: SampleContext) -> dict[str, str]:
    """The "Sample events" account and its API key: ``{{api_key}}``, ``{{account_id}}``. One account per database,
    reused by every invoke (its key is kept in ``<data dir>/sample_events_api_key``), so invoking sample events
    against the dev database does not add an account each time."""
    assert sample.database_url, "setup_account needs 'database' in needs"
    key = kept_api_key(Path(get_settings().data_dir) / "sample_events_api_key")
    database = Database(sample.database_url)
    try:
        with database.session() as session:
            accounts = AccountService(session)
            account = session.scalar(select(Account).where(Account.email == SAMPLE_ACCOUNT_EMAIL))
            if account is None:
                account, _ = accounts.signup(name="Sample events", email=SAMPLE_ACCOUNT_EMAIL, raw_key=key)
            elif session.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_key(key))) is None:
                accounts.create_key(account.id, name="sample events", raw_key=key)  # the key file was removed
            return {"api_key": key, "account_id": account.id}
    finally:
        database.dispose()


# --------------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------------


class UsageError(Exception):
    """A command-line mistake: printed as one line, exit status 2."""


def describe_functions(specs: dict[str, FunctionSpec], only: str | None = None, events_dir: Path = EVENTS_DIR) -> str:
    """The template's functions (handler, SQS/other event sources) with their sample events and what each needs."""
    lines = []
    for logical_id, spec in sorted(specs.items()):
        if only is not None and logical_id != only:
            continue
        sources = ", ".join(sorted({str(e.get("Type")) for e in spec.events.values()})) or "invoked directly"
        lines.append(f"{logical_id}  ({spec.handler} in {spec.code_uri.name}/; events: {sources})")
        samples = sample_events(logical_id, events_dir)
        if not samples:
            lines.append("    (no sample event)")
        for path in samples:
            meta = EventMeta.for_event(path)
            notes = [f"needs: {', '.join(meta.needs)}"] if meta.needs else []
            names = placeholders_in(json.loads(path.read_text(encoding="utf-8")))
            if names:
                notes.append(f"placeholders: {', '.join(names)}")
            suffix = f"  [{'; '.join(notes)}]" if notes else ""
            lines.append(f"    {path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path}{suffix}")
            if meta.description:
                lines.append(f"        {meta.description}")
    return "\n".join(lines)


def _event_file(path: Path) -> Any:
    if not path.is_file():
        raise UsageError(f"event file {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UsageError(f"event file {path.name} is not valid JSON: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m airies.local.invoke", description=__doc__.split("\n\n")[0])
    parser.add_argument("function", nargs="?", help="logical id of an AWS::Serverless::Function in template.yaml")
    parser.add_argument("--event", "-e", type=Path, help="event JSON file (default: the function's first sample)")
    parser.add_argument(
        "--env-file", "-n", type=Path, default=DEFAULT_ENV_FILE, help="env file (SAM --env-vars format)"
    )
    parser.add_argument("--template", "-t", type=Path, default=DEFAULT_TEMPLATE)
    parser.add_argument("--no-meta", action="store_true", help="ignore the event's .meta.json sidecar")
    parser.add_argument(
        "--list", "-l", action="store_true", help="list the functions (or the one named) and their sample events"
    )
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except UsageError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    try:
        specs = function_specs(load_template(args.template), root=Path(args.template).resolve().parent)
    except OSError as exc:
        raise UsageError(f"cannot read the template {args.template}: {exc.strerror}") from exc
    if args.function is not None and args.function not in specs:
        raise UsageError(
            f"unknown function {args.function!r}; the template's functions: {', '.join(sorted(specs))} "
            "(--list shows them with their sample events)"
        )
    if args.list:
        print(describe_functions(specs, args.function))
        return 0
    if args.function is None:
        raise UsageError("name a function to invoke (--list shows the template's functions and their events)")
    event_path: Path | None = args.event
    if event_path is None:
        samples = sample_events(args.function)
        if not samples:
            raise UsageError(f"{args.function} has no sample event under {EVENTS_DIR}; pass one with --event FILE")
        event_path = samples[0]
    event = _event_file(event_path)
    if args.no_meta:
        names = placeholders_in(event)
        if names:
            raise UsageError(
                f"{event_path.name} has placeholders ({', '.join('{{' + n + '}}' for n in names)}) that its "
                f"sidecar's setup fills in; without it the invoke gets them verbatim (an API key placeholder answers "
                "401): run it without --no-meta, or replace them in a copy of the event"
            )
        result = invoke_function(args.function, event, template_path=args.template, env_file=args.env_file)
    else:
        result = run_sample_event(
            args.function, event_path, env_file=args.env_file, template_path=args.template, check=False
        )
    json.dump(result, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    if not args.no_meta:
        try:
            check_result(result, EventMeta.for_event(event_path))
        except AssertionError as exc:
            print(f"expectation of {event_path.name} not met: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
