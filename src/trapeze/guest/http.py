"""Outgoing HTTP through the monitor (checked against the channel's bound)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trapeze.guest._runtime import call


def request(
    method: str,
    url: str,
    headers: Mapping[str, str] | None = None,
    body: bytes | str | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Returns {"status": int, "headers": {str: str}, "body": bytes}."""
    if isinstance(body, str):
        body = body.encode()
    reply = call(
        "http.request",
        {
            "method": method,
            "url": url,
            "headers": dict(headers or {}),
            "body": body,
            "timeout": timeout,
        },
    )
    return dict(reply) if isinstance(reply, dict) else {"status": 0, "headers": {}, "body": b""}


def get(url: str, **kw: Any) -> dict[str, Any]:
    return request("GET", url, **kw)


def post(url: str, **kw: Any) -> dict[str, Any]:
    return request("POST", url, **kw)
