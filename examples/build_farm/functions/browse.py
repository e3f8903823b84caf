"""GET /builds/{build}: what the caller can see of a build;
GET /builds/{build}/{kind}/{name}: one file (kind: sources, headers, objects, artefacts)."""

from __future__ import annotations

import base64
from typing import Any

from functions.common import TABLES, BadRequest, build_name, digest, file_name, reply, scan_all

from trapeze.guest import kv


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    params = event.get("pathParameters") or {}
    try:
        build = build_name(params.get("build"))
        name = file_name(params["name"]) if "name" in params else None
    except BadRequest as e:
        return reply(400, {"error": str(e)})
    if name is None:
        # A scan at the caller's label lists exactly what it may see; the function needs no
        # notion of who owns which build.
        listing = {kind: {key[len(build) + 1:]: {"bytes": len(v), "sha256": digest(v)}
                          for key, v in scan_all(table, f"{build}/") if isinstance(v, bytes)}
                   for kind, table in TABLES.items()}
        return reply(200, {"build": build, **listing})
    table = TABLES.get(params.get("kind", ""))
    if table is None:
        return reply(404, {"error": f"no kind {params.get('kind')!r}: one of {', '.join(TABLES)}"})
    data = kv.get(table, f"{build}/{name}")
    if not isinstance(data, bytes):
        return reply(404, {"error": f"no {params['kind']} {name} in build {build}"})
    return {"statusCode": 200, "headers": {"content-type": "application/octet-stream"},
            "body": base64.b64encode(data).decode("ascii"), "isBase64Encoded": True}
