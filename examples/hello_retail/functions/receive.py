"""POST /photos: a photographer's reply with the photo for their assignment.

The caller runs at their own label, photographer:<principal>; only photographers reply, for
their own assignment. In that order:

1. At the caller's label (no declassifier needed for these replies): check the request, and
   that `From` is a phone the caller registered — their registrations are the ones visible
   at their label — and download the image. The download leaves through the `image_fetch`
   declassifier, which allows it only before any raise, so the URL can carry nothing above
   the photographer.
2. Raise to owner (assignments, task tokens and workflow state are the owner's), find the
   assignment for that phone, check that it belongs to one of the caller's registrations,
   store the image and complete the workflow's task.
3. Reply "Thanks so much <principal>!"; the `owner_replies` declassifier lets exactly that
   through, or turns anything else into "ServerError" (policy.py).
"""

from __future__ import annotations

import base64
from typing import Any

from functions.retail import ASSIGNMENTS, IMAGES, REGISTRATIONS, json_body, scan_all, text_reply

from trapeze.guest import TrapezeError, http, kv, label, tasks


def thanks(principal: str) -> dict[str, Any]:
    return text_reply(200, f"Thanks so much {principal}!")


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if event.get("httpMethod") != "POST" or event.get("resource") != "/photos":
        return text_reply(400, "ClientError: expected POST /photos")
    request = event.get("requestContext") or {}
    principal = request.get("principal")
    if not isinstance(principal, str) or request.get("label") != f"photographer:{principal}" \
            or label.current() != f"photographer:{principal}":
        return text_reply(403, "ClientError: only a photographer replies with a photo, "
                          "at their own label")
    try:
        body = json_body(event)
    except ValueError:
        return text_reply(400, "ClientError: the body must be JSON")
    if not isinstance(body, dict):
        return text_reply(400, "ClientError: the body must be a JSON object")
    url, content_type, sender = body.get("MediaUrl0"), body.get("MediaContentType0"), body.get(
        "From"
    )
    if not isinstance(url, str) or not isinstance(content_type, str) or not isinstance(
        sender, str | int
    ) or isinstance(sender, bool):
        return text_reply(400, "ClientError: MediaUrl0, MediaContentType0 and From are required")

    # The caller's own registrations (at photographer:<principal> nobody else's are visible)
    # whose phone is `From`: the assignment must be one of theirs.
    phone = str(sender)
    mine = {key for key, rec in scan_all(REGISTRATIONS)
            if isinstance(rec, dict) and rec.get("phone") == phone}
    if not mine:
        return text_reply(200, "ServerError")

    try:
        image = http.request("GET", url, timeout=10)
    except TrapezeError:
        return text_reply(200, "ServerError")
    if image.get("status") != 200:
        return text_reply(200, "ServerError")
    data = image["body"]
    data = data if isinstance(data, bytes) else bytes(data)

    label.raise_to("owner")
    assignment = kv.get(ASSIGNMENTS, phone)
    if not isinstance(assignment, dict) or assignment.get("status") != "pending":
        return text_reply(200, "ServerError")
    task_event = assignment["taskEvent"]
    photographer = task_event.get("photographer") or {}
    if photographer.get("id") not in mine:
        return text_reply(200, "ServerError")
    product_id = task_event["data"]["id"]
    # The store keeps bytes only as a whole value, so the image goes into the record as
    # base64 text (as DynamoDB's JSON form carries binary attributes).
    kv.put(IMAGES, product_id, {
        "Body": base64.b64encode(data).decode(),
        "BodyEncoding": "base64",
        "ContentType": content_type,
        "Metadata": {"from": photographer["phone"]},
    })
    tasks.complete(assignment["taskToken"], output={
        **task_event,
        "image": f"{IMAGES}/{product_id}",
        "success": "true",
    })
    return thanks(principal)
