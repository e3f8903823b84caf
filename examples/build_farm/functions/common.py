"""Shared by the build farm's functions: request parsing, name checks, store helpers, tools.

Nothing here is trusted or knows about labels. The checks exist because the same code also
runs in the IFC-off baseline, unconfined: there a file name like `../x` or a flag like
`-wrapper` would reach the host, so honest code refuses them itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import resource
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from trapeze.guest import kv

# Tables. Keys are "<build>/<file name>"; each value is the file's bytes.
SOURCES = "sources"      # translation units (*.c)
HEADERS = "headers"      # everything a TU may #include (*.h)
OBJECTS = "objects"      # compiler output (*.o)
ARTEFACTS = "artefacts"  # what `link` produced: static libraries and programs
TABLES = {"sources": SOURCES, "headers": HEADERS, "objects": OBJECTS, "artefacts": ARTEFACTS}

GCC = "/usr/bin/gcc"
AR = "/usr/bin/ar"

_BUILD = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}")
# Compiler flags a build may choose: macros, optimization, language standard, warnings and
# code-generation switches. Not -o/-B/-wrapper/@file/-Wl,/-Wa,/-Wp,/-fplugin=, which would
# name other files or programs.
_CFLAG = re.compile(
    r"-(D[A-Za-z_]\w*(=[^\s]*)?|U[A-Za-z_]\w*|O[0-3sgz]?|std=[a-z0-9+]+|g|w|pedantic"
    r"|W(?![lap],)[a-z0-9=+-]*|f(?!plugin)[a-z0-9-]+(=[a-z0-9-]+)?)"
)
_LIB = re.compile(r"-l[A-Za-z0-9_+-]+")


class BadRequest(ValueError):
    pass


def request_body(event: dict[str, Any]) -> dict[str, Any]:
    """The JSON object a client POSTed (through the gateway) or the event itself (direct)."""
    if "httpMethod" not in event:
        return event
    body = event.get("body") or "{}"
    if event.get("isBase64Encoded"):
        body = base64.b64decode(body).decode("utf-8")
    try:
        data = json.loads(body)
    except ValueError as e:
        raise BadRequest(f"malformed JSON: {e}") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


def build_name(value: Any) -> str:
    if not isinstance(value, str) or not _BUILD.fullmatch(value):
        raise BadRequest(f"invalid build name {value!r}")
    return value


def file_name(value: Any, suffixes: Sequence[str] = ()) -> str:
    """A flat file name: it becomes a path inside the function's work directory."""
    if not isinstance(value, str) or not _FILE.fullmatch(value) or ".." in value:
        raise BadRequest(f"invalid file name {value!r}")
    if suffixes and not value.endswith(tuple(suffixes)):
        raise BadRequest(f"{value!r} must end with one of {', '.join(suffixes)}")
    return value


def flags(value: Any, pattern: re.Pattern[str], what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(f, str) for f in value):
        raise BadRequest(f"{what} must be a list of strings")
    for f in value:
        if not pattern.fullmatch(f):
            raise BadRequest(f"{what}: {f!r} is not allowed")
    return list(value)


def cflags(value: Any) -> list[str]:
    return flags(value, _CFLAG, "cflags")


def libs(value: Any) -> list[str]:
    return flags(value, _LIB, "libs")


def scan_all(table: str, prefix: str) -> Iterator[tuple[str, Any]]:
    """Every visible (key, value) under `prefix`, page by page."""
    start: str | None = None
    while True:
        page = kv.scan(table, prefix=prefix, start_after=start, limit=200)
        yield from page
        if len(page) < 200:
            return
        start = page[-1][0]


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ToolRun:
    """A finished tool: its exit status, diagnostics, and the CPU and wall time it took
    (reported so that a slow build can be told apart from a loaded machine)."""

    def __init__(self, proc: subprocess.CompletedProcess[str], cpu_s: float,
                 wall_s: float) -> None:
        self.returncode, self.stderr = proc.returncode, proc.stderr
        self.cpu_s, self.wall_s = cpu_s, wall_s


def run_tool(args: list[str], cwd: Path, context: Any) -> ToolRun:
    """Run a declared executable; give up a little before the invocation's deadline so the
    function can still answer with the tool's diagnostics instead of timing out blind."""
    remaining = context.get_remaining_time_in_millis() / 1000 - 2.0
    # RUSAGE_CHILDREN accumulates over the process's life (a warm worker serves many
    # invocations): the tool's share is the difference.
    before, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, errors="replace",
                          stdin=subprocess.DEVNULL, timeout=max(remaining, 1.0), check=False)
    return ToolRun(proc, _children_cpu() - before, time.perf_counter() - t0)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def reply(status: int, body: dict[str, Any]) -> dict[str, Any]:
    return {"statusCode": status, "headers": {"content-type": "application/json"},
            "body": json.dumps(body)}


def tail(text: str, limit: int = 4000) -> str:
    return text if len(text) <= limit else "…" + text[-limit:]
