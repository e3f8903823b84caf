"""ReleaseProduct task Restore: write the released item and price at the execution's label.

It also publishes the item's category: the original's release left the category table alone,
so a client browsing by category saw nothing (HELLO-RETAIL.md §5.4).
"""

from __future__ import annotations

from typing import Any

from functions.retail import CATALOG, CATEGORIES, PRICES, now_ms

from trapeze.guest import kv


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    product_id = str(event["id"])
    if not isinstance(event.get("item"), dict):
        raise ValueError(f"product {product_id!r} has no item to release")
    item = event["item"]
    kv.put(CATALOG, product_id, item)
    if isinstance(item.get("category"), str):
        kv.put(CATEGORIES, item["category"], {"updated": now_ms(), "updatedBy": "release"})
    if event.get("price") is not None:
        kv.put(PRICES, product_id, event["price"])
    return {"id": product_id, "released": "true"}
