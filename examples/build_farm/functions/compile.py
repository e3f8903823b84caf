"""POST /compile: compile one translation unit of a build into an object file.

Reads the TU and the build's headers from the store, writes them into a private work
directory, runs `gcc -c` (a declared executable: under Trapeze it runs inside this
invocation's confinement) and stores the object beside the sources.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from functions.common import (
    GCC,
    HEADERS,
    OBJECTS,
    SOURCES,
    BadRequest,
    build_name,
    cflags,
    digest,
    file_name,
    reply,
    request_body,
    run_tool,
    scan_all,
    tail,
)

from trapeze.guest import kv


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    try:
        req = request_body(event)
        build = build_name(req.get("build"))
        source = file_name(req.get("source"), (".c",))
        flags = cflags(req.get("cflags"))
    except BadRequest as e:
        return reply(400, {"error": str(e)})
    code = kv.get(SOURCES, f"{build}/{source}")
    if not isinstance(code, bytes):
        # Also what another builder gets: a facet it cannot see does not exist for it.
        return reply(404, {"error": f"no source {source} in build {build}"})
    obj = source[:-2] + ".o"
    with tempfile.TemporaryDirectory(prefix="tu-") as tmp:
        work = Path(tmp)
        for key, data in scan_all(HEADERS, f"{build}/"):
            try:
                (work / file_name(key[len(build) + 1:], (".h",))).write_bytes(data)
            except BadRequest:
                continue  # only honest uploads are compiled against; upload checked names
        (work / source).write_bytes(code)
        # Relative names only, so that the object does not depend on the work directory.
        run = run_tool([GCC, *flags, "-c", source, "-o", obj], work, context)
        if run.returncode != 0 or not (work / obj).exists():
            return reply(422, {"error": f"gcc failed on {source} (exit {run.returncode})",
                               "diagnostics": tail(run.stderr)})
        data = (work / obj).read_bytes()
    kv.put(OBJECTS, f"{build}/{obj}", data)
    return reply(200, {"object": obj, "bytes": len(data), "sha256": digest(data),
                       "diagnostics": tail(run.stderr), "gcc_cpu_s": round(run.cpu_s, 4),
                       "gcc_wall_s": round(run.wall_s, 4)})
