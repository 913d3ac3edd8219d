from __future__ import annotations

import pytest

from airies.core.bootstrap import PerContainer, after_snapstart_restore


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
