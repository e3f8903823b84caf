"""What every scenario shares: the session it runs in, quiescence, the external services
Hello Retail talks to, CPU accounting over a process tree, and counting an app's lines.

A scenario module exports `NAME`, `APP` (the example directory), `setup(ifc, size, workdir)`
returning a `Session` (untimed: start the runtime, seed principals and data), and
`run(session)` (timed: the scenario's requests, ending only when everything they caused has
finished). `run` returns a transcript of the responses legitimate principals received, so the
harness can compare the two modes (transparency).
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


class NotAvailable(Exception):
    """The scenario cannot run here (its example is missing or broken); the reason is shown
    in RESULTS.md instead of a row of numbers."""


@dataclass
class Session:
    """A started runtime plus whatever the scenario needs to drive it."""

    rt: Any
    client: httpx.Client
    repetitions: int = 1          # timed operations per run; ms are reported per operation
    state: dict[str, Any] = field(default_factory=dict)
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        self.client.close()
        self.rt.close()
        for close in reversed(self.closers):
            close()


# ---------------------------------------------------------------------- quiescence
def settle(rt: Any, *, running_allowed: int = 0, timeout: float = 120.0) -> None:
    """Wait until no invocation runs, every stream record is delivered, and at most
    `running_allowed` workflow executions are still RUNNING — two quiet polls in a row, as
    `Runtime.wait_idle` does.

    `wait_idle` itself demands that *no* execution runs; Hello Retail legitimately parks
    executions (waiting for a photographer's reply, or for a photographer to become free), so
    the scenario says how many it expects to be parked and we wait for everything else.
    """
    assert rt.invoker is not None and rt.engines is not None
    deadline = time.monotonic() + timeout
    quiet = 0
    while time.monotonic() < deadline:
        idle = (not rt.invoker.busy() and rt.engines.streams.idle()
                and len(rt.engines.workflows.db.executions(status="RUNNING")) <= running_allowed)
        quiet = quiet + 1 if idle else 0
        if quiet >= 2:
            return
        time.sleep(0.02)
    running = len(rt.engines.workflows.db.executions(status="RUNNING"))
    raise TimeoutError(f"not quiescent after {timeout:.0f}s: busy={rt.invoker.busy()} "
                       f"streams idle={rt.engines.streams.idle()} running workflows={running} "
                       f"(expected at most {running_allowed})")


def wait_until(check: Callable[[], Any], what: str, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.01)


def parallel(calls: Iterable[Callable[[], Any]]) -> list[Any]:
    """Run a batch of requests at once (the scripts' natural concurrency) and keep order."""
    calls = list(calls)
    if len(calls) == 1:
        return [calls[0]()]
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(lambda f: f(), calls))


def summary(r: httpx.Response) -> tuple[int, Any]:
    """A response as the transcript keeps it: status and decoded body."""
    try:
        body: Any = r.json()
    except ValueError:
        body = r.text
    return (r.status_code, body)


# ---------------------------------------------------------------------- external services
class Mailbox:
    """An aiosmtpd handler that keeps every message (the photographers' inbox)."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        with self.lock:
            self.messages.append({"to": list(envelope.rcpt_tos)})
        return "250 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_smtp_sink() -> tuple[Mailbox, int, Callable[[], None]]:
    from aiosmtpd.controller import Controller

    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    return box, port, controller.stop


def png(width: int, height: int, seed: int = 7) -> bytes:
    """A noisy RGB PNG, written with zlib alone (no imaging library needed): the product
    photo the image server hands out, big enough to be a realistic download (~190 KB)."""
    rows = bytearray()
    state = seed
    for _ in range(height):
        rows.append(0)  # filter: none
        line = bytearray()
        for _ in range(width * 3):
            state = (state * 1103515245 + 12345) & 0x7FFFFFFF
            line.append(state >> 23)
        rows += line

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(bytes(rows), 6)) + chunk(b"IEND", b""))


def start_image_server(photo: bytes) -> tuple[str, Callable[[], None]]:
    class Images(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path != "/photo.png":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(photo)))
            self.end_headers()
            self.wfile.write(photo)

        def log_message(self, *args: Any) -> None:
            pass  # keep the progress display readable

    server = ThreadingHTTPServer(("127.0.0.1", 0), Images)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return f"http://127.0.0.1:{server.server_address[1]}/", stop


# ---------------------------------------------------------------------- CPU accounting
def _stat(pid: str) -> tuple[int, float] | None:
    """(ppid, utime+stime+cutime+cstime in clock ticks) of one process, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # comm may contain spaces and parentheses: the fields start after the last ')'.
    fields = text[text.rindex(")") + 2:].split()
    # fields[0] is state (field 3 of proc(5)), so ppid is [1], utime..cstime are [11..14].
    return int(fields[1]), float(sum(int(x) for x in fields[11:15]))


def tree_cpu_seconds(root: int | None = None) -> float:
    """CPU time (user+system, the process's own and its reaped children's) of `root` and
    every living descendant. Sampled before and after a window, the difference counts
    processes that appeared or ended during it: an ended child's time moves into its
    parent's cutime/cstime when the parent reaps it."""
    root = os.getpid() if root is None else root
    children: dict[int, list[int]] = {}
    ticks: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _stat(entry)
        if st is None:
            continue
        pid = int(entry)
        children.setdefault(st[0], []).append(pid)
        ticks[pid] = st[1]
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0.0)
        todo.extend(children.get(pid, ()))
    return total / os.sysconf("SC_CLK_TCK")


def wait_cpu_quiet(limit_s: float = 15.0, window_s: float = 0.25,
                   max_share: float = 0.05) -> None:
    """Wait until the process tree is (nearly) idle: workers and zygotes started by setup
    may still be importing modules in the background, and a timed window must not begin
    while one mode is still paying for its start-up."""
    deadline = time.monotonic() + limit_s
    before = tree_cpu_seconds()
    while time.monotonic() < deadline:
        time.sleep(window_s)
        now = tree_cpu_seconds()
        if now - before <= max_share * window_s:
            return
        before = now


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# ---------------------------------------------------------------------- app size
def app_lines(app_dir: Path) -> int:
    """Non-blank, non-comment lines of the app's functions/*.py (docstrings count as code:
    they are part of what a developer writes and maintains)."""
    n = 0
    for path in sorted((app_dir / "functions").glob("*.py")):
        for line in path.read_text().splitlines():
            s = line.strip()
            if s and not s.startswith("#"):
                n += 1
    return n


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
