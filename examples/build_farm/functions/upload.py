"""POST /sources: keep one source file or header of a build, at the builder's label."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from functions.common import (
    HEADERS,
    SOURCES,
    BadRequest,
    build_name,
    digest,
    file_name,
    reply,
    request_body,
)

from trapeze.guest import kv


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    try:
        req = request_body(event)
        build = build_name(req.get("build"))
        name = file_name(req.get("path"), (".c", ".h"))
        if not isinstance(req.get("content"), str):
            raise BadRequest("content must be the file's bytes in base64")
        data = base64.b64decode(req["content"], validate=True)
    except (BadRequest, binascii.Error) as e:
        return reply(400, {"error": str(e)})
    # Written at the label the request runs at: another builder, even one uploading a file
    # under the very same key, writes its own facet and never sees this one.
    kv.put(SOURCES if name.endswith(".c") else HEADERS, f"{build}/{name}", data)
    return reply(201, {"build": build, "path": name, "bytes": len(data), "sha256": digest(data)})
