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


async def _wave(url: str, tokens: dict[str, str], wave: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=WAVE, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def one(i: int) -> httpx.Response:
            who = PRINCIPALS[i % len(PRINCIPALS)]
            return await client.post(
                "/notes", json={"id": f"w{wave}-{i}", "text": f"{who}:{wave}:{i}"},
                headers={"Authorization": f"Bearer {tokens[who]}"},
            )

        return await asyncio.gather(*(one(i) for i in range(WAVE)))


def test_two_thousand_concurrent_requests(running: Any) -> None:
    tokens = {p: running.add_principal(p, label=f"user:{p}") for p in PRINCIPALS}
    sizes = []
    for wave in range(2):
        responses = asyncio.run(_wave(running.url, tokens, wave))
        sizes.append(_rss_mb())
        statuses = Counter(r.status_code for r in responses)
        assert statuses == {201: WAVE}, statuses
        # Each request answered once, with its own request id.
        ids = [r.headers["x-trapeze-request-id"] for r in responses]
        assert len(set(ids)) == WAVE
        stored = sorted(json.loads(r.text)["stored"] for r in responses)
        assert stored == sorted(f"w{wave}-{i}" for i in range(WAVE))
    for n, who in enumerate(PRINCIPALS):
        mine = running.view(f"user:{who}").scan("notes", prefix=f"{who}/", limit=10000)
        expected = {f"{who}/w{w}-{i}": f"{who}:{w}:{i}"
                    for w in range(2) for i in range(n, WAVE, len(PRINCIPALS))}
        assert dict(mine) == expected
        # Nobody else's notes are visible at this principal's label.
        everything = running.view(f"user:{who}").scan("notes", limit=10000)
        assert all(k.startswith(f"{who}/") for k, _ in everything)
    # Bounded memory: the second wave does not grow the server like the first did.
    assert sizes[1] - sizes[0] < 64, sizes
