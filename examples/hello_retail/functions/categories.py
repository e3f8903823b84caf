"""GET /categories: the names of every category visible at the caller's label."""

from __future__ import annotations

from typing import Any

from functions.retail import CATEGORIES, reply, scan_all, text_reply


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if event.get("httpMethod") != "GET" or event.get("resource") != "/categories":
        return text_reply(400, "Invalid request: expected GET /categories")
    # scan yields each key once (the newest facet visible here), so names come out distinct
    # rather than as the raw facet rows the secure original returned.
    return reply(200, [name for name, _ in scan_all(CATEGORIES)])
