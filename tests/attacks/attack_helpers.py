"""Fixtures for the attack suite: sandboxes over tests/attacks/app and a fake monitor."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fake_monitor import FakeMonitor
from trapeze.sandbox import Sandbox, SandboxSpec

APP = Path(__file__).parent / "app"


def _first_components_under_tmp() -> list[str]:
    """When the checkout (or the Python installation, e.g. a virtualenv) lives under /tmp,
    the child's private /tmp holds the read-only mount points on the way to them (the
    sandbox mounts readable roots back in): static, empty-of-secrets entries, the same for
    every invocation. Anything else in /tmp is state. Sorted: compare sorted listings."""
    import site

    import trapeze

    roots = [APP, Path(trapeze.__file__).parent, sys.prefix, sys.base_prefix, sys.exec_prefix,
             *site.getsitepackages()]
    out = set()
    for root in roots:
        parts = Path(root).resolve().parts
        if len(parts) > 2 and parts[1] == "tmp":
            out.add(parts[2])
    return sorted(out)


MOUNTED_IN_TMP = _first_components_under_tmp()


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


def wait_for_pool(sb: Sandbox, timeout: float = 30.0) -> None:
    """Wait until the sandbox holds its whole pool of waiting children, taken in as the
    zygote reports them: the replacement of the last invocation's child has been forked.
    A fixed sleep was not enough on a loaded machine, and the next invocation then took
    the one child left (or an extra forked for it) instead of drawing from the pool."""
    end = time.monotonic() + timeout
    while True:
        with sb._ctrl_lock:
            sb._pump(0.05)
            ready = len(sb._ready)
        if ready >= sb.spec.prefork:
            return
        assert time.monotonic() < end, (
            f"the pool did not refill: {ready} of {sb.spec.prefork} children waiting "
            f"after {timeout:g} s")
