"""Fixtures for the attack suite: sandboxes over tests/attacks/app and a fake monitor."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fake_monitor import FakeMonitor
from trapeze.sandbox import Sandbox, SandboxSpec

APP = Path(__file__).parent / "app"
# When the checkout itself lives under /tmp, the child's private /tmp holds the read-only
# mount point on the way to the app (the sandbox mounts readable roots back in): a static,
# empty-of-secrets entry, the same for every invocation. Anything else in /tmp is state.
MOUNTED_IN_TMP = (
    [APP.resolve().parts[2]]
    if len(APP.resolve().parts) > 2 and APP.resolve().parts[1] == "tmp" else []
)


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
