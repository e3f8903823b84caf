"""A handler as a user writes it: plain Python, no platform imports needed."""

from __future__ import annotations

from typing import Any


def handler(event: dict[str, Any], context: Any) -> dict[str, str]:
    name = event.get("name", "world") if isinstance(event, dict) else "world"
    return {"greeting": f"hello, {name}"}
