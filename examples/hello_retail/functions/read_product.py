"""The owner's side of a product release: read an unreleased item and its price.

Called synchronously by the ReleaseProduct task `delete`, which runs at public. It raises to
owner to read; its reply reaches `delete` only through the `product_release` declassifier.
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
