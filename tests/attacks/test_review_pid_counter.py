"""The pid counter as a channel between invocations (review, session 6). Children without
executables shared the zygote's PID namespace, so every thread a high invocation started
took the next id of a counter the next invocation read back from its own thread's id:
`tid - pid` told a low invocation how many threads (bits) ran before it. Every child is now
the init of its own PID namespace, where ids start again at 1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from attack_helpers import make_sandbox

from fake_monitor import FakeMonitor
from trapeze.sandbox import Sandbox


@pytest.fixture(params=[(), ("/bin/true",)], ids=["threads only", "with executables"])
def sb(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    s = make_sandbox(handler="review3_attacks:handler", function="review3", timeout_s=10,
                     prefork=2, executables=request.param)
    yield s
    s.close()


def run(sandbox: Sandbox, **event: object) -> dict:
    out = sandbox.run(event, {}, FakeMonitor())
    assert out.status == "ok", out
    return out.value


def test_ids_a_child_sees_do_not_depend_on_earlier_invocations(sb: Sandbox) -> None:
    assert sb.pidns_per_child
    seen = []
    for secret in (0, 40, 0, 40):
        # The reader is a child forked before the writer ran (the pool holds two).
        assert run(sb, attack="spend_pids", n=secret) == {"threads": secret}
        seen.append(run(sb, attack="read_pids"))
    assert seen == [{"pid": 1, "thread": 2}] * 4, seen
