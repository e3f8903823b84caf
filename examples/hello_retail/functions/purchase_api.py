"""POST /purchase: start a PurchaseProduct execution for the authenticated caller.

The user is the principal the gateway authenticated, never a field of the body; the execution
runs at the caller's label, so one client's purchases are invisible to the other. Only a
client buys, at exactly their own label client:<principal>: the card company takes the buyer
from that label, so anybody whose clearance is above client:bob (the owner, the card company)
asking at client:bob (X-Trapeze-Label) would otherwise pay with, or overwrite, Bob's card.
"""

from __future__ import annotations

from typing import Any

from functions.retail import is_already_exists, json_body, reply, text_reply

from trapeze.guest import TrapezeError, workflows


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if event.get("httpMethod") != "POST":
        return text_reply(400, "Invalid request: expected POST /purchase")
    user = (event.get("requestContext") or {}).get("principal")
    if not isinstance(user, str) or not user:
        return text_reply(401, "Purchases need an authenticated user")
    if (event.get("requestContext") or {}).get("label") != f"client:{user}":
        return text_reply(403, f"Only a client buys, at their own label (client:{user})")
    try:
        body = json_body(event)
    except ValueError as exc:
        return text_reply(400, f"Invalid request: {exc}")
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        return text_reply(400, "Invalid request: the body must be an object with a product id")
    card = body.get("creditCard")
    if card is not None and not isinstance(card, str):
        return text_reply(400, "Invalid request: creditCard must be a string")
    # Without a request id every submission is a new purchase (the gateway's id is unique).
    request_id = str(body.get("requestId") or event["requestContext"].get("requestId"))
    state: dict[str, Any] = {"user": user, "id": body["id"], "requestId": request_id,
                             "storeCC": bool(body.get("storeCC"))}
    if card is not None:
        state["creditCard"] = card
    name = f"{user}--product-{body['id']}--request-{request_id}"
    try:
        workflows.start("purchase_product", name, state)
    except TrapezeError as exc:
        if is_already_exists(exc):
            return reply(200, "Purchase was submitted previously. You will not be charged twice.")
        raise
    return reply(200, "Purchase submitted. Thank you!")
