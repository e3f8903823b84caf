"""PurchaseProduct task Publish: record an approved purchase on the retail stream."""

from __future__ import annotations

from typing import Any

from functions.retail import STREAM

from trapeze.guest import streams


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    # The execution's output is kept with its history; a card number has no business there.
    event = {k: v for k, v in event.items() if k != "creditCard"}
    payment = event.get("payment") if isinstance(event.get("payment"), dict) else {}
    # Only "true" counts: the original tested truthiness and so published "false" too.
    if payment.get("approved") != "true":
        return {**event, "published": "false"}
    streams.put(STREAM, {
        "productId": event["id"],
        "productPrice": event["price"],
        "userId": event["user"],
        "authorization": payment["authorization"],
    }, partition_key=event["user"])
    return {**event, "published": "true"}
