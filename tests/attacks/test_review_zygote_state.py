"""Review: a child must learn nothing about the children before it from its zygote or slot.

Every child is a copy of the zygote's memory. The zygote used to reap each child with wait4()
and keep its exit status and rusage (for the monitor's crash reasons) in the very frame the
next child was forked from: an invocation at a high label ended with os._exit(secret) and the
next one, at any label, read the secret from the zygote's locals. It also replaced a slot's
tmpfs only when the previous child had used it, so the next child could tell from /tmp's
times whether its predecessor wrote a file. Now the zygote reaps without reading anything
(waitid with no buffers; the monitor reads the status from its own pidfd) and every child
gets a fresh tmpfs.
"""

from __future__ import annotations

import time

import pytest
from attack_helpers import make_sandbox, wait_for_pool

from fake_monitor import FakeMonitor
from trapeze.sandbox import Sandbox

SECRET = 0xA7


@pytest.fixture(scope="module")
def sb() -> Sandbox:
    box = make_sandbox(handler="review_zygote:handler", timeout_s=10, prefork=1)
    yield box
    box.close()


def test_the_next_child_cannot_read_its_predecessors_exit_status(sb: Sandbox) -> None:
    out = sb.run({"attack": "exit_with", "code": SECRET}, {}, FakeMonitor())
    # The monitor still tells why the high invocation failed (from its own pidfd)...
    assert out.status == "crash" and f"code {SECRET}" in (out.error or ""), out
    wait_for_pool(sb)  # the zygote has reaped it and forked the next child
    # ...but the next child finds nothing of it in the zygote it was forked from.
    seen = sb.run({"attack": "zygote_frames", "status": str(SECRET << 8)}, {}, FakeMonitor())
    assert seen.status == "ok", seen
    assert "free_slots" in seen.value["names"]  # main() was found
    assert not {"status", "usage", "code", "recent", "asked"} & set(seen.value["names"])
    assert seen.value["status_found"] is False


def test_every_child_gets_a_fresh_tmp_whatever_its_predecessor_did(sb: Sandbox) -> None:
    views = []
    for write in (False, False, True, False):
        out = sb.run({"attack": "tmp_stat", "write": write}, {}, FakeMonitor())
        assert out.status == "ok", out
        views.append(tuple(out.value))
        time.sleep(0.2)
    # A fresh tmpfs each time: no two children saw the same /tmp, used or not.
    assert len(set(views)) == len(views), views
