"""Load: 2,000 concurrent requests from several principals against a store-writing function.

The server runs as users run it (`trapeze run` in its own process), so its memory can be
measured apart from the test's HTTP client. No request is lost or answered twice, every
principal's data is intact afterwards, and the server's memory does not grow from one wave of
2,000 requests to the next.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

PRINCIPALS = ("ann", "ben", "cat", "dan")
WAVE = 2000


def _tree(pid: int) -> list[int]:
    """A process and all its descendants (monitor, zygotes, children)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _settled_tree(pid: int, timeout_s: float = 30.0) -> None:
    """Wait until the server's process tree stops changing (the same processes in readings a
    second apart): after a wave, children are still exiting and each zygote is still forking
    its `prefork` replacements, so a reading taken at once counts anywhere from none to all of
    them (CI saw 29 waiting children, 67 MB, in one reading and not in the other)."""
    deadline = time.monotonic() + timeout_s
    before = sorted(_tree(pid))
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = sorted(_tree(pid))
        if now == before:
            return
        before = now
    raise AssertionError(f"the server's process tree kept changing for {timeout_s:.0f} s")


def _tree_memory(pid: int) -> tuple[float, str]:
    """Proportional memory (PSS, MB) of a process tree, and a line per process for a failure
    message. PSS, not RSS: a zygote's pages shared by its children count once, not once per
    child, so the sum is what the tree costs the machine."""
    total, lines = 0.0, []
    for p in _tree(pid):
        try:
            pss = next(int(line.split()[1]) / 1024
                       for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines()
                       if line.startswith("Pss:"))
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")[:70].decode()
        except (OSError, StopIteration):
            continue  # exited meanwhile, or a zombie
        total += pss
        lines.append(f"{p}: {pss:.1f} MB {cmd}")
    return total, "\n".join(lines)


async def _wave(url: str, tokens: dict[str, str], wave: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=WAVE, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        async def one(i: int) -> httpx.Response:
            who = PRINCIPALS[i % len(PRINCIPALS)]
            return await client.post(
                "/notes", json={"id": f"w{wave}-{i}", "text": f"{who}:{wave}:{i}"},
                headers={"Authorization": f"Bearer {tokens[who]}"},
            )

        return await asyncio.gather(*(one(i) for i in range(WAVE)))


def _cli(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "trapeze.cli", *args], capture_output=True,
                          text=True, timeout=120, check=True)
    return proc.stdout


def test_two_thousand_concurrent_requests(tmp_path: Path, app_factory: Any) -> None:
    app = app_factory(tmp_path, web_port=9, smtp_port=9)  # notes uses no channel
    store = f"sqlite:///{tmp_path / 'load.db'}"
    app_dir = str(app.manifest.root)
    tokens = {}
    for who in PRINCIPALS:
        out = _cli("principal", "add", app_dir, who, "--label", f"user:{who}", "--store", store)
        tokens[who] = out.split("token (shown once, store it now): ")[1].strip()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "trapeze.cli", "run", app_dir, "--port", str(port),
         "--store", store], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/_trapeze/health", timeout=5)
                break
            except httpx.TransportError:
                assert server.poll() is None, server.communicate()
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.2)
        sizes = []
        for wave in range(2):
            responses: Any = asyncio.run(_wave(url, tokens, wave))
            _settled_tree(server.pid)
            sizes.append(_tree_memory(server.pid))
            statuses = Counter(r.status_code for r in responses)
            assert statuses == {201: WAVE}, statuses
            # Each request answered once, with its own request id and its own write.
            ids = [r.headers["x-trapeze-request-id"] for r in responses]
            assert len(set(ids)) == WAVE
            stored = sorted(json.loads(r.text)["stored"] for r in responses)
            assert stored == sorted(f"w{wave}-{i}" for i in range(WAVE))
        for n, who in enumerate(PRINCIPALS):
            r = httpx.get(f"{url}/notes", headers={"Authorization": f"Bearer {tokens[who]}"},
                          timeout=60)
            expected = {f"{who}/w{w}-{i}": f"{who}:{w}:{i}"
                        for w in range(2) for i in range(n, WAVE, len(PRINCIPALS))}
            assert r.json() == expected  # all of its notes, and nobody else's
        # Bounded memory: a second wave of 2,000 leaves the server (all its processes) where
        # the first left it, give or take allocator noise.
        (first, first_processes), (second, processes) = sizes
        assert second - first < 48, (
            f"{first:.0f} MB -> {second:.0f} MB:\nafter the first wave:\n{first_processes}\n"
            f"after the second:\n{processes}")
    finally:
        server.terminate()
        server.communicate(timeout=60)
