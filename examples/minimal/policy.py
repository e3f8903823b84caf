"""Trusted policy for the minimal app: runs in the monitor, never in the sandbox."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def release_greeting(value: Any, info: Mapping[str, Any]) -> Any:
    # Only the greeting text may be lowered to public; anything else the function put in its
    # reply stays at the function's label.
    if isinstance(value, dict) and set(value) == {"greeting"}:
        return {"greeting": str(value["greeting"])[:200]}
    raise ValueError("only a greeting can be declassified")
