"""Honest code: the secret's owner stores it, at the label she runs at (`secret`)."""

from __future__ import annotations

import json
from typing import Any

from trapeze.guest import kv


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    body = json.loads(event.get("body") or "{}")
    secret = body.get("secret")
    if not isinstance(secret, str) or len(secret) != 16:
        return {"statusCode": 400, "body": "the secret is 16 hex digits"}
    int(secret, 16)  # reject anything that is not hex
    kv.put("vault", "secret", secret)
    return {"statusCode": 201, "body": json.dumps({"stored": True})}
