"""POST /images: keep an uploaded image, at the label the uploader's request runs at."""

from __future__ import annotations

import json
import uuid
from typing import Any

from functions.imaging import BadImage, body_bytes, describe

from trapeze.guest import kv


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    try:
        data = body_bytes(event)
        meta = describe(data)
    except (BadImage, ValueError) as e:
        return _reply(400, {"error": str(e)})
    image_id = uuid.uuid4().hex
    # The image and its description land at the uploader's label: nobody below or beside
    # it (another uploader, an anonymous caller) can read, list or even detect them.
    kv.put("images", image_id, data)
    kv.put("meta", image_id, {**meta, "bytes": len(data)})
    return _reply(201, {"id": image_id, **meta})


def _reply(status: int, body: dict[str, Any]) -> dict[str, Any]:
    return {"statusCode": status, "headers": {"content-type": "application/json"},
            "body": json.dumps(body)}
