"""POST /release: the owner makes a product (item and price) visible to everybody.

Products are created at the owner's label. A released copy has to be *written* at the label
everybody can read — the bottom label, where anonymous callers run — and nothing can write
below its own label, so the owner asks at bottom (`X-Trapeze-Label: bottom`). This function
then gets the owner's item and price through `read_product` (which raises to owner; its reply
comes back only through the `owner_replies` declassifier, which checks that the principal who
asked is allowed to release and reads the public fields of the item and its price itself), and
starts ReleaseProduct with what it got. The workflow name
keeps a release idempotent per product and principal.

The read happens here, in the caller's own synchronous call chain, because that is where the
monitor knows *who* asked (`info["principal"]`); workflow tasks run on behalf of no principal.
"""

from __future__ import annotations

from typing import Any

from functions.retail import RELEASE_LABEL, is_already_exists, json_body, reply, text_reply

from trapeze.guest import InvocationError, TrapezeError, functions, workflows


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if event.get("httpMethod") != "POST":
        return text_reply(400, "Invalid request: expected POST /release")
    request = event.get("requestContext") or {}
    user = request.get("principal") or "anonymous"
    try:
        body = json_body(event)
    except ValueError as exc:
        return text_reply(400, f"Invalid request: {exc}")
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        return text_reply(400, "Invalid request: the body must be an object with a product id")
    if request.get("label") != RELEASE_LABEL:
        return text_reply(400, "Invalid request: a release is written where everybody can read "
                          f"it; ask at the {RELEASE_LABEL!r} label "
                          f"(header X-Trapeze-Label: {RELEASE_LABEL})")
    try:
        released = functions.invoke("read_product", {"id": body["id"]})
    except InvocationError:
        # The declassifier refused (not a releaser) or the read failed: the same reply either
        # way, so nothing about the owner's catalog leaks to a caller who may not release.
        return text_reply(403, "Product release refused")
    if not isinstance(released, dict) or not isinstance(released.get("item"), dict) \
            or released.get("id") != body["id"]:
        return text_reply(404, "Product not found")
    try:
        workflows.start("release_product", f"{user}--product-{body['id']}--release",
                        {"user": user, **released})
    except TrapezeError as exc:
        if is_already_exists(exc):
            return reply(200, "Product release had previously been initiated.")
        raise
    return reply(200, "Product release started. The storefront will be updated shortly.")
