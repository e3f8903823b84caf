"""GET /images/{id}/features (one image's features) and GET /images (the caller's images)."""

from __future__ import annotations

import json
from typing import Any

from trapeze.guest import kv


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    image_id = (event.get("pathParameters") or {}).get("id")
    if image_id is None:
        # A scan at the caller's label lists exactly the images it may see; the function
        # needs no notion of who owns what.
        return _reply(200, {"images": [{"id": k, **v} for k, v in _scan_all("meta")]})
    found = kv.get("features", image_id)
    if found is None:
        status = "not extracted yet" if kv.get("meta", image_id) is not None else "no image"
        return _reply(404, {"error": f"{status}: {image_id}"})
    return _reply(200, {"id": image_id, "features": found})


def _scan_all(table: str) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    start: str | None = None
    while True:
        page = kv.scan(table, start_after=start, limit=1000)
        rows.extend((k, v) for k, v in page)
        if len(page) < 1000:
            return rows
        start = page[-1][0]


def _reply(status: int, body: dict[str, Any]) -> dict[str, Any]:
    return {"statusCode": status, "headers": {"content-type": "application/json"},
            "body": json.dumps(body)}
