"""POST /images/{id}/extract: compute the image's features and keep them beside it."""

from __future__ import annotations

import json
import time
from typing import Any

from functions.imaging import BadImage, decode, features

from trapeze.guest import kv


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    image_id = (event.get("pathParameters") or {}).get("id", "")
    data = kv.get("images", image_id)
    if not isinstance(data, bytes):
        # Also what another uploader or an anonymous caller gets for an image that exists:
        # its facet is not visible at their label, so to them it does not exist.
        return _reply(404, {"error": f"no image {image_id}"})
    started = time.process_time()
    try:
        result = features(decode(data))
    except BadImage as e:
        return _reply(422, {"error": str(e)})
    result["cpu_ms"] = round((time.process_time() - started) * 1000, 1)
    kv.put("features", image_id, result)
    return _reply(200, {"id": image_id, "features": result})


def _reply(status: int, body: dict[str, Any]) -> dict[str, Any]:
    return {"statusCode": status, "headers": {"content-type": "application/json"},
            "body": json.dumps(body)}
