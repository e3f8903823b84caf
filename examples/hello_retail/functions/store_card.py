"""PurchaseProduct task StoreCreditCard: have the card company keep the card, if asked to.

The card ends up at client-cc:<client> (see card_company.py); this task only learns whether
it was stored.
"""

from __future__ import annotations

from typing import Any

from trapeze.guest import functions


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    card = event.get("creditCard")
    if not event.get("storeCC") or not isinstance(card, str):
        return {"stored": False}
    return functions.invoke("card_company", {"op": "store", "creditCard": card})
