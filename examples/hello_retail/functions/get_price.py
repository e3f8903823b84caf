"""PurchaseProduct task GetPrice: the product's price, as visible at the buyer's label.

An unreleased product's price is the owner's, so a client cannot buy it.
"""

from __future__ import annotations

from typing import Any

from functions.retail import PRICES

from trapeze.guest import kv


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    price = kv.get(PRICES, str(event.get("id")))
    try:
        int(price)  # the secure original also insisted on an integer price
    except (TypeError, ValueError):
        return {**event, "gotPrice": "false", "failureReason": "Product not in catalog"}
    return {**event, "gotPrice": "true", "price": price}
