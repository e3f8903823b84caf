"""GET /products/{id}: one product (with its image reference and price when visible)."""

from __future__ import annotations

from typing import Any

from functions.retail import CATALOG, PRICES, reply, text_reply

from trapeze.guest import kv


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if event.get("httpMethod") != "GET":
        return text_reply(400, "Invalid request: expected GET /products/{id}")
    product_id = (event.get("pathParameters") or {}).get("id")
    if not isinstance(product_id, str) or not product_id:
        return text_reply(400, "Invalid request: no product id in the path")
    item = kv.get(CATALOG, product_id)
    if not isinstance(item, dict):
        # The same reply whether the product does not exist or is not visible at this label.
        return text_reply(404, "Product not found")
    out = {
        "id": product_id,
        **{k: item.get(k) for k in ("category", "brand", "name", "description")},
    }
    if "image" in item:
        out["image"] = item["image"]
    price = kv.get(PRICES, product_id)
    if price is not None:
        out["price"] = price
    return reply(200, out)
