"""The owner's side of a product release: name the product to release.

Called synchronously by `release_api`, which runs at the bottom label. It raises to owner;
its reply reaches `release_api` only through the `owner_replies` declassifier, which, on
behalf of a releaser (`policy.RELEASERS`) only, reads the product's catalog entry and price
itself and releases their public fields. What this function returns beside the id is what
the IFC-off baseline releases, so it applies the same rule (policy.public_item).
"""

from __future__ import annotations

from typing import Any

from functions.retail import CATALOG, IMAGES, PRICES

from trapeze.guest import kv, label

PUBLIC_FIELDS = ("brand", "name", "description", "category")


def public_item(product_id: str, item: Any) -> dict[str, Any] | None:
    if not isinstance(item, dict):
        return None
    out = {f: item[f] for f in PUBLIC_FIELDS
           if isinstance(item.get(f), str) and len(item[f]) <= (4000 if f == "description"
                                                                else 200)}
    if item.get("image") == f"{IMAGES}/{product_id}":
        out["image"] = item["image"]
    return out


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    product_id = str(event["id"])
    label.raise_to("owner")
    item = public_item(product_id, kv.get(CATALOG, product_id))
    if item is None:
        return {"id": None, "item": None, "price": None}
    price = kv.get(PRICES, product_id)
    if not (isinstance(price, str) and price.isdigit() and len(price) <= 12):
        price = None
    return {"id": product_id, "item": item, "price": price}
