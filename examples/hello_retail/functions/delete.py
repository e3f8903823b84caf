"""ReleaseProduct task Delete: read the owner's item and price of a product.

Despite the name (kept from the original) it deletes nothing. It raises to owner to read
them; its result goes back to the release execution only through `product_release`.
"""

from __future__ import annotations

from typing import Any

from functions.retail import CATALOG, PRICES

from trapeze.guest import kv, label


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    product_id = str(event["id"])
    label.raise_to("owner")
    return {"id": product_id, "item": kv.get(CATALOG, product_id),
            "price": kv.get(PRICES, product_id)}
