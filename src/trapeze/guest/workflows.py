"""Starting workflows."""

from __future__ import annotations

from typing import Any

from trapeze.guest._runtime import call


def start(name: str, input: Any = None, label: str | None = None) -> Any:
    return call("workflows.start", {"name": name, "input": input, "label": label})
