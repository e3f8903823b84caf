"""Messages to declared external channels (e-mail and the like)."""

from __future__ import annotations

from typing import Any

from trapeze.guest._runtime import call


def send(channel: str, message: dict[str, Any]) -> Any:
    return call("channel.send", {"channel": channel, "message": message})
