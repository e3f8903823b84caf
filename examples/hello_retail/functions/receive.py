"""POST /photos: a photographer's reply with the photo for their assignment.

The caller runs at their own label (photographer:X) and raises to owner at once: the
assignment, the task token and the workflow state are the owner's. From then on everything
this function outputs needs a declassifier: the image download (channel "images") and the
short reply to the photographer (channel "response"), both declared in policy.py.
"""

from __future__ import annotations

import base64
from typing import Any

from functions.retail import ASSIGNMENTS, IMAGES, json_body, text_reply

from trapeze.guest import TrapezeError, http, kv, label, tasks


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    label.raise_to("owner")
    if event.get("httpMethod") != "POST" or event.get("resource") != "/photos":
        return text_reply(400, "ClientError: expected POST /photos")
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

    assignment = kv.get(ASSIGNMENTS, str(sender))
    if not isinstance(assignment, dict) or assignment.get("status") != "pending":
        return text_reply(200, "ServerError")
    task_event = assignment["taskEvent"]
    product_id = task_event["data"]["id"]
    photographer = task_event["photographer"]

    try:
        image = http.request("GET", url, timeout=10)
    except TrapezeError:
        return text_reply(200, "ServerError")
    if image.get("status") != 200:
        return text_reply(200, "ServerError")
    body = image["body"]
    # The store keeps bytes only as a whole value, so the image goes into the record as
    # base64 text (as DynamoDB's JSON form carries binary attributes).
    kv.put(IMAGES, product_id, {
        "Body": base64.b64encode(body if isinstance(body, bytes) else bytes(body)).decode(),
        "BodyEncoding": "base64",
        "ContentType": content_type,
        "Metadata": {"from": photographer["phone"]},
    })
    tasks.complete(assignment["taskToken"], output={
        **task_event,
        "image": f"{IMAGES}/{product_id}",
        "success": "true",
    })
    return text_reply(200, f"Thanks so much {photographer.get('name', '')}!")
