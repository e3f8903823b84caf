"""Invoking other functions through the monitor."""

from __future__ import annotations

from typing import Any

from trapeze.guest._runtime import call


def invoke(name: str, event: Any) -> Any:
    """Synchronous call at the current label; returns the callee's result."""
    return call("functions.invoke", {"function": name, "event": event})


def invoke_async(name: str, event: Any, label: str | None = None) -> Any:
    """Fire and forget, at the current label or a higher one."""
    return call("functions.invoke_async", {"function": name, "event": event, "label": label})
