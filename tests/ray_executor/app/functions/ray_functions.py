"""Handlers of the Ray executor tests: an ordinary store writer, and attempts to reach Ray."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from trapeze.guest import functions, kv


def writer(event: dict[str, Any], context: Any) -> Any:
    """Write event["value"] under event["key"]; `sleep_before` keeps it in flight first (an
    attempt lost with its node then wrote nothing), `sleep_after` after the write."""
    time.sleep(event.get("sleep_before", 0))
    kv.put("w", event["key"], event["value"])
    time.sleep(event.get("sleep_after", 0))
    return {"written": event["key"]}


def spawner(event: dict[str, Any], context: Any) -> Any:
    """Start one asynchronous writer per key (they run wherever the gateway sends them)."""
    return [functions.invoke_async("writer", {"key": k, "value": k,
                                              "sleep_before": event.get("sleep", 0)})
            for k in event["keys"]]


def _caught(fn: Any, *args: Any) -> dict[str, Any]:
    try:
        result = fn(*args)
    except OSError as exc:
        return {"errno": exc.errno, "exc": type(exc).__name__}
    return {"ok": repr(result)[:200]}


def _tcp(host: str, port: int) -> Any:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(1)
    s.connect((host, port))
    return "connected"


def _unix(path: str) -> Any:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return "connected"


def _read(path: str) -> Any:
    with open(path, "rb") as fh:
        return fh.read(64)


def _open_fds() -> list[int]:
    out = []
    for fd in range(1024):
        try:
            os.fstat(fd)
        except OSError:
            continue
        out.append(fd)
    return out


def ray_attack(event: dict[str, Any], context: Any) -> Any:
    """Try every way to Ray the test names: its TCP ports, its unix sockets, its files."""
    return {
        "tcp": [_caught(_tcp, host, port) for host, port in event.get("tcp", [])],
        "unix": [_caught(_unix, path) for path in event.get("unix", [])],
        "stat": [_caught(os.stat, path) for path in event.get("paths", [])],
        "read": [_caught(_read, path) for path in event.get("paths", [])],
        "listdir": [_caught(os.listdir, path) for path in event.get("dirs", [])],
        "fds": _open_fds(),
        "env": sorted(os.environ),
    }
