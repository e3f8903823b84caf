"""GET /products?category=C: the products of one category visible at the caller's label."""

from __future__ import annotations

from typing import Any

from functions.retail import CATALOG, reply, scan_all, text_reply

FIELDS = ("brand", "name", "description")


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if event.get("httpMethod") != "GET" or event.get("resource") != "/products":
        return text_reply(400, "Invalid request: expected GET /products")
    query = event.get("queryStringParameters") or {}
    if set(query) != {"category"}:
        return text_reply(400, "Invalid request: the query must hold exactly 'category'")
    category = query["category"]
    items = [
        {"id": key, "category": item["category"], **{f: item.get(f) for f in FIELDS}}
        for key, item in scan_all(CATALOG)
        if isinstance(item, dict) and item.get("category") == category
    ]
    return reply(200, items)
