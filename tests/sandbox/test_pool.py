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
        assert len(sb._ready) <= sb.spec.prefork
        # A child killed a moment ago may not have exited yet on a loaded machine: waited
        # for. Nothing here takes in the zygote's reports, so an extra kept, or forked and
        # never cancelled, stays alive and still fails this.
        end = time.monotonic() + 30
        while _live_children(zygote) > sb.spec.prefork + 1 and time.monotonic() < end:
            time.sleep(0.05)
        assert _live_children(zygote) <= sb.spec.prefork + 1


def test_an_extra_left_waiting_is_not_kept_beyond_the_pool() -> None:
    """An extra forked for a waiting caller can arrive just before a pool child, and the
    caller draws one of the two at random. Kept, an undrawn extra grew the pool to
    `prefork` + 1 until someone took it (CI, session 6: the descriptor test found 3 children
    waiting at prefork 2). Extras beyond the callers waiting for them are now killed when a
    caller is served. The race needs few concurrent callers (a few times in 300 invocations
    from two threads), so the test builds that moment by hand, 20 times: with the old code
    the extra stays behind with probability 1/2 each time."""
    with Sandbox(make_spec(handler="ordinary:echo", prefork=2)) as sb:

        def pump_until(n: int) -> None:
            end = time.monotonic() + 10
            with sb._ctrl_lock:
                while len(sb._ready) < n and time.monotonic() < end:
                    sb._pump(0.05)
                assert len(sb._ready) == n

        pump_until(2)
        for _ in range(20):
            with sb._ctrl_lock:
                busy = [sb._take_ready() for _ in range(2)]  # both pool children taken
                sb._waiting = 1  # a caller waits and asks for an extra
                sb._send({"op": "spawn", "n": 1})
                sb._extras_due += 1
            pump_until(1)
            assert sb._ready[0].extra
            busy[0].kill()  # one pool child ends; its replacement comes after the extra
            pump_until(2)
            sb._waiting = 0
            child = sb._take(time.monotonic() + 5)  # the waiting caller draws one of the two
            assert child is not None
            assert not any(c.extra for c in sb._ready), "an extra was kept"
            busy.append(child)
            for child in busy[1:]:
                child.kill()
            pump_until(2)
            for child in busy:
                child.close()
        assert not any(c.extra for c in sb._ready)
