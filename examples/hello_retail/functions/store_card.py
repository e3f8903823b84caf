"""PurchaseProduct task StoreCreditCard: keep the card for next time, if asked to.

The card is written at client-cc:<client>, which only that client's card-company label (and
top) can read: not the owner, not other clients, not even the client's own label.
"""

from __future__ import annotations

from typing import Any

from functions.retail import CARDS

from trapeze.guest import kv, label


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    card = event.get("creditCard")
    if not event.get("storeCC") or not isinstance(card, str):
        return {"stored": False}
    family, _, who = str(label.current()).partition(":")
    if family != "client":
        return {"stored": False}  # only shoppers have a card label
    label.raise_to(f"client-cc:{who}")
    kv.put(CARDS, str(event["user"]), card)
    return {"stored": True}
