"""ReleaseProduct task Delete: the item and price to release, checked.

Despite the name (kept from the original) it deletes nothing. In the original it read the
owner's item and price; here `release_api` has already read them through the declassifier
(where the monitor knows which principal asked, see release_api.py), so this step only checks
their shape and passes on `{id, item, price}`.
"""

from __future__ import annotations

from typing import Any


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    product_id, item, price = event.get("id"), event.get("item"), event.get("price")
    if not isinstance(product_id, str) or not isinstance(item, dict):
        raise ValueError("the release input needs an id and the product's item")
    if price is not None and not isinstance(price, str):
        raise ValueError("the price to release must be a string")
    return {"id": product_id, "item": item, "price": price}
