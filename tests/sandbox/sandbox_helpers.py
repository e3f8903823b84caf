"""Fixtures for the sandbox suite: sandboxes over tests/sandbox/app and a fake monitor."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trapeze.sandbox import Sandbox, SandboxSpec

APP = Path(__file__).parent / "app"


def make_spec(**kw: Any) -> SandboxSpec:
    return SandboxSpec(function=kw.pop("function", "ordinary"), app_dir=APP,
                       handler=kw.pop("handler", "ordinary:handler"), **kw)


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    sb = Sandbox(make_spec(preload=("numpy",), env={"STAGE": "test"}))
    sb.start()
    yield sb
    sb.close()
