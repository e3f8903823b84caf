"""Load: 2,000 concurrent requests from several principals against a store-writing function.

No request is lost or answered twice, every principal's data is intact afterwards, and the
server's memory does not grow from one wave of requests to the next.
"""

from __future__ import annotations

import asyncio
import json
import resource
from collections import Counter
from typing import Any

import httpx

PRINCIPALS = ("ann", "ben", "cat", "dan")
WAVE = 2000


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _wave(url: str, tokens: dict[str, str], wave: int, size: int
                ) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def one(i: int) -> httpx.Response:
            who = PRINCIPALS[i % len(PRINCIPALS)]
            return await client.post(
                "/notes", json={"id": f"w{wave}-{i}", "text": f"{who}:{wave}:{i}"},
                headers={"Authorization": f"Bearer {tokens[who]}"},
            )

        return await asyncio.gather(*(one(i) for i in range(size)))


def test_two_thousand_concurrent_requests(running: Any) -> None:
    tokens = {p: running.add_principal(p, label=f"user:{p}") for p in PRINCIPALS}
    sizes = []
    # A warm-up wave of 500, then the 2,000: memory after each must not keep growing.
    for wave, size in enumerate((500, WAVE)):
        responses = asyncio.run(_wave(running.url, tokens, wave, size))
        sizes.append(_rss_mb())
        statuses = Counter(r.status_code for r in responses)
        assert statuses == {201: size}, statuses
        # Each request answered once, with its own request id.
        ids = [r.headers["x-trapeze-request-id"] for r in responses]
        assert len(set(ids)) == size
        stored = sorted(json.loads(r.text)["stored"] for r in responses)
        assert stored == sorted(f"w{wave}-{i}" for i in range(size))
    for n, who in enumerate(PRINCIPALS):
        mine = running.view(f"user:{who}").scan("notes", prefix=f"{who}/", limit=10000)
        expected = {f"{who}/w{w}-{i}": f"{who}:{w}:{i}"
                    for w, size in enumerate((500, WAVE))
                    for i in range(n, size, len(PRINCIPALS))}
        assert dict(mine) == expected
        # Nobody else's notes are visible at this principal's label.
        everything = running.view(f"user:{who}").scan("notes", limit=10000)
        assert all(k.startswith(f"{who}/") for k, _ in everything)
    # Bounded memory: four times the requests after the warm-up barely move the server.
    assert sizes[1] - sizes[0] < 64, sizes
