"""The invocation's security label: read it, raise it (never lower)."""

from __future__ import annotations

from typing import Any

from trapeze.guest._runtime import call


def current() -> Any:
    return call("label.current", {})


def raise_to(label: str) -> Any:
    """Raise the current label to `label`; FlowError if it is not above the current one."""
    return call("label.raise", {"label": label})
