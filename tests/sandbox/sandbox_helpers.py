"""Fixtures for the sandbox suite: sandboxes over tests/sandbox/app and a fake monitor."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trapeze.errors import FlowError
from trapeze.sandbox import Sandbox, SandboxSpec

APP = Path(__file__).parent / "app"


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
                raise FlowError("cannot lower the label from public to bottom")
            self.label = args["label"]
            return self.label
        raise RuntimeError(f"secret internal detail for {op}")


def make_spec(**kw: Any) -> SandboxSpec:
    return SandboxSpec(function=kw.pop("function", "ordinary"), app_dir=APP,
                       handler=kw.pop("handler", "ordinary:handler"), **kw)


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    sb = Sandbox(make_spec(preload=("numpy",), env={"STAGE": "test"}))
    sb.start()
    yield sb
    sb.close()
