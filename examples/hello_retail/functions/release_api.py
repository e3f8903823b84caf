"""POST /release: the owner makes a product (item and price) visible to everybody.

Products are created at the owner's label. Releasing copies the item and its price to public
through the `product_release` declassifier (policy.py); see the README for how the request is
made (at the public label) and why.
"""

from __future__ import annotations

from typing import Any

from functions.retail import is_already_exists, json_body, reply, text_reply

from trapeze.guest import TrapezeError, workflows


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if event.get("httpMethod") != "POST":
        return text_reply(400, "Invalid request: expected POST /release")
    user = (event.get("requestContext") or {}).get("principal") or "anonymous"
    try:
        body = json_body(event)
    except ValueError as exc:
        return text_reply(400, f"Invalid request: {exc}")
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        return text_reply(400, "Invalid request: the body must be an object with a product id")
    try:
        workflows.start("release_product", f"{user}--product-{body['id']}--release",
                        {"user": user, "id": body["id"]})
    except TrapezeError as exc:
        if is_already_exists(exc):
            return reply(200, "Product release had previously been initiated.")
        raise
    return reply(200, "Product release started. The storefront will be updated shortly.")
