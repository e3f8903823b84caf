"""The pool of confined children: a burst leaves a function with its `prefork` children.

Extras are forked for callers that find no child waiting. Before extras were asked for by
demand (and cancelled when the pool's replacements served their callers first), a burst of
2,000 invocations from 16 threads left ~80 idle confined children behind, each holding a
slot and memory until the next burst used it; CI's load test saw the server's memory grow by
600 MB from one wave of requests to the next.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sandbox_helpers import make_spec

from trapeze.sandbox import Sandbox


def _live_children(pid: int) -> int:
    count = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            count += 1
    return count


def test_a_burst_leaves_only_the_pool() -> None:
    with Sandbox(make_spec(handler="ordinary:echo", prefork=1)) as sb:
        assert sb._proc is not None
        zygote = sb._proc.pid

        def one(i: int) -> object:
            outcome = sb.run({"i": i}, {}, lambda *a: None)
            assert outcome.status == "ok", outcome
            return outcome.value

        with ThreadPoolExecutor(16) as pool:
            values = list(pool.map(one, range(600)))
        assert values == [{"i": i} for i in range(600)]
        # A few calls after the burst take in whatever extras were forked before their
        # cancel reached the zygote (each is killed on arrival: nobody waits for it).
        for i in range(3):
            one(i)
            time.sleep(0.2)
        assert _live_children(zygote) <= sb.spec.prefork + 1
        assert len(sb._ready) <= sb.spec.prefork
