"""POST /link: archive a build's objects into a static library and link programs against it.

Request: {"build", "archive": "libx.a", "members": ["a.o", ...],
          "programs": {"prog": ["main.o", ...]}, "libs": ["-lm"]}.
Answers the artefacts (base64) and keeps them in the store beside the objects.
"""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path
from typing import Any

from functions.common import (
    AR,
    ARTEFACTS,
    GCC,
    OBJECTS,
    BadRequest,
    build_name,
    digest,
    file_name,
    libs,
    reply,
    request_body,
    run_tool,
    tail,
)

from trapeze.guest import kv


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    try:
        req = request_body(event)
        build = build_name(req.get("build"))
        archive = file_name(req.get("archive"), (".a",))
        members = [file_name(m, (".o",)) for m in _list(req.get("members"), "members")]
        programs = req.get("programs") or {}
        if not isinstance(programs, dict):
            raise BadRequest("programs must map a program name to its objects")
        mains = {file_name(p): [file_name(o, (".o",)) for o in _list(objs, p)]
                 for p, objs in programs.items()}
        extra = libs(req.get("libs"))
    except BadRequest as e:
        return reply(400, {"error": str(e)})
    needed = dict.fromkeys([*members, *(o for objs in mains.values() for o in objs)])
    with tempfile.TemporaryDirectory(prefix="link-") as tmp:
        work = Path(tmp)
        for obj in needed:
            data = kv.get(OBJECTS, f"{build}/{obj}")
            if not isinstance(data, bytes):
                return reply(409, {"error": f"{obj} is not compiled in build {build}"})
            (work / obj).write_bytes(data)
        steps = [[AR, "rcs", archive, *members]]
        steps += [[GCC, "-o", prog, *objs, archive, *extra] for prog, objs in mains.items()]
        for args in steps:
            run = run_tool(args, work, context)
            if run.returncode != 0:
                return reply(422, {"error": f"{Path(args[0]).name} failed (exit "
                                            f"{run.returncode})", "diagnostics": tail(run.stderr)})
        out: dict[str, Any] = {}
        for name in [archive, *mains]:
            data = (work / name).read_bytes()
            kv.put(ARTEFACTS, f"{build}/{name}", data)
            out[name] = {"bytes": len(data), "sha256": digest(data),
                         "data": base64.b64encode(data).decode("ascii")}
    return reply(200, {"build": build, "artefacts": out})


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise BadRequest(f"{what} must be a non-empty list")
    return value
