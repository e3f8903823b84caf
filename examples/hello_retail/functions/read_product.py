"""The owner's side of a product release: read an unreleased item and its price.

Called synchronously by `release_api`, which runs at the bottom label. It raises to owner to
read; its reply reaches `release_api` only through the `owner_replies` declassifier, which
releases it only when the invoking principal is one of `policy.RELEASERS`.
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
