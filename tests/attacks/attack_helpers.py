"""Fixtures for the attack suite: sandboxes over tests/attacks/app and a fake monitor."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trapeze.errors import FlowError
from trapeze.sandbox import Sandbox, SandboxSpec

APP = Path(__file__).parent / "app"
# When the checkout itself lives under /tmp, the child's private /tmp holds the read-only
# mount point on the way to the app (the sandbox mounts readable roots back in): a static,
# empty-of-secrets entry, the same for every invocation. Anything else in /tmp is state.
MOUNTED_IN_TMP = (
    [APP.resolve().parts[2]]
    if len(APP.resolve().parts) > 2 and APP.resolve().parts[1] == "tmp" else []
)


class FakeMonitor:
    """The test double of the monitor: a dict store and a current label."""

    def __init__(self, label: str = "public") -> None:
        self.store: dict[tuple[str, str], Any] = {}
        self.label = label
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, op: str, args: dict[str, Any]) -> Any:
        self.calls.append((op, args))
        if op == "kv.get":
            return self.store.get((args["table"], args["key"]))
        if op == "kv.put":
            self.store[(args["table"], args["key"])] = args["value"]
            return True
        if op == "label.current":
            return self.label
        if op == "label.raise":
            if args["label"] == "bottom":
                raise FlowError("cannot lower the label")
            self.label = args["label"]
            return self.label
        raise RuntimeError(f"secret internal detail for {op}")


def make_sandbox(handler: str = "attacks:handler", **kw: Any) -> Sandbox:
    spec = SandboxSpec(function=kw.pop("function", "attack"), app_dir=APP, handler=handler, **kw)
    sb = Sandbox(spec)
    sb.start()
    return sb


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    sb = make_sandbox(timeout_s=10)
    yield sb
    sb.close()


@pytest.fixture
def monitor() -> FakeMonitor:
    return FakeMonitor()


def pid_alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")
