from __future__ import annotations

import ast
import gc
from pathlib import Path

import pytest

from airies.core.bootstrap import PerContainer, after_snapstart_restore, init_done, pause_collector_for_init
from airies.core.config import PROJECT_ROOT
from airies.local.invoke import load_handler
from airies.local.template import FunctionSpec, function_specs, load_template


def test_built_once_per_container_and_replaceable() -> None:
    calls: list[int] = []

    def build() -> dict[str, int]:
        calls.append(1)
        return {"n": len(calls)}

    service = PerContainer(build)
    assert service.built is None and calls == []  # nothing at import time
    first = service.get()
    assert service.get() is first and calls == [1]
    double = {"n": -1}
    service.set(double)
    assert service.get() is double and calls == [1]
    service.set(None)
    assert service.get() == {"n": 2}


def test_restore_hook_is_a_no_op_without_snapstart() -> None:
    ran: list[bool] = []
    after_snapstart_restore(lambda: ran.append(True))  # snapshot_restore_py exists only on Lambda with SnapStart
    assert ran == []


@pytest.mark.parametrize(
    ("initialization", "built_at_import"),
    [("snap-start", True), ("on-demand", False), ("provisioned-concurrency", False), (None, False)],
)
def test_primed_for_a_snapshot_only_while_snapstart_initializes(
    monkeypatch: pytest.MonkeyPatch, initialization: str | None, built_at_import: bool
) -> None:
    if initialization is None:
        monkeypatch.delenv("AWS_LAMBDA_INITIALIZATION_TYPE", raising=False)
    else:
        monkeypatch.setenv("AWS_LAMBDA_INITIALIZATION_TYPE", initialization)
    calls: list[int] = []
    service = PerContainer(lambda: calls.append(1) or len(calls))
    service.prime_for_snapshot()
    assert (service.built is not None) is built_at_import
    service.get()
    service.prime_for_snapshot()
    assert calls == [1]  # built once, whichever call built it


@pytest.mark.parametrize(("on_lambda", "frozen"), [(True, True), (False, False)])
def test_the_collector_is_paused_for_an_init_and_resumed_after_it(
    monkeypatch: pytest.MonkeyPatch, on_lambda: bool, frozen: bool
) -> None:
    if on_lambda:
        monkeypatch.setenv("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001")
    else:
        monkeypatch.delenv("AWS_LAMBDA_RUNTIME_API", raising=False)
    frozen_before = gc.get_freeze_count()
    try:
        pause_collector_for_init()
        assert not gc.isenabled()
        init_done()
        assert gc.isenabled()
        assert (gc.get_freeze_count() > frozen_before) is frozen  # what the init built, out of the collector's sight
    finally:
        gc.unfreeze()
        gc.enable()


def _handler_modules() -> list[Path]:
    specs = function_specs(load_template(PROJECT_ROOT / "template.yaml"), root=PROJECT_ROOT)
    return sorted({spec.module_path for spec in specs.values()})


@pytest.mark.parametrize("path", _handler_modules(), ids=lambda path: f"{path.parent.name}/{path.name}")
def test_every_handler_module_pauses_the_collector_before_its_imports_and_resumes_it_last(path: Path) -> None:
    body = [ast.unparse(node) for node in ast.parse(path.read_text()).body if not isinstance(node, ast.Expr)
            or not isinstance(node.value, ast.Constant)]  # fmt: skip
    assert body[:3] == [
        "from __future__ import annotations",
        "from airies.core import bootstrap",
        "bootstrap.pause_collector_for_init()",
    ], path
    assert body[-1] == "bootstrap.init_done()", path


def test_an_init_that_fails_does_not_leave_the_collector_paused(tmp_path: Path) -> None:
    (tmp_path / "handler.py").write_text(
        "from airies.core import bootstrap\nbootstrap.pause_collector_for_init()\nraise ImportError('a missing package')\n"
    )
    spec = FunctionSpec(
        logical_id="BrokenFunction",
        code_uri=tmp_path,
        handler="handler.handler",
        runtime="python3.11",
        timeout=3,
        memory_size=128,
        layer_dirs=(),
        environment={},
        events={},
    )
    try:
        with pytest.raises(ImportError, match="a missing package"):
            load_handler(spec)
        assert gc.isenabled()
    finally:
        gc.enable()  # the rest of the session runs with the collector, whatever this test found
