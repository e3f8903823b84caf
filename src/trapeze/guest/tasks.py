"""Completing workflow tasks (callback-style steps)."""

from __future__ import annotations

from typing import Any

from trapeze.guest._runtime import call


def complete(token: str, output: Any = None, error: str | None = None) -> Any:
    return call("tasks.complete", {"token": token, "output": output, "error": error})
