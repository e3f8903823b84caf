"""Review: frames from a child are attacker input, whatever their types or how many."""

from __future__ import annotations

import os
import time

import pytest
from attack_helpers import make_sandbox, pid_alive

from fake_monitor import FakeMonitor
from trapeze.sandbox import Sandbox


@pytest.fixture(scope="module")
def hostile() -> Sandbox:
    sb = make_sandbox(handler="review_attacks:handler", timeout_s=10)
    yield sb
    sb.close()


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    # Generous: what is waited for is the kernel's exit of a killed child and the zygote's
    # reaping, slow on a loaded machine; a process that outlives its invocation stays.
    end = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < end:
        time.sleep(0.01)
    assert not pid_alive(pid), f"process {pid} outlived its invocation"


_CALL = {"t": "call", "id": 1, "args": {}}


@pytest.mark.parametrize(
    "bodies",
    [
        # An unhashable op used to escape as TypeError from `op in OPS`: run() raised, the
        # child was never killed and the caller got an internal error instead of `protocol`.
        [{**_CALL, "op": ["kv.get"]}],
        [{**_CALL, "op": {"kv.get": 1}}],
        [{**_CALL, "op": b"kv.get"}],
        [{"t": ["call"], "id": 1, "op": "kv.get", "args": {}}],
        [{"t": {"call": 1}}],
        [{"t": "result", "ok": False, "error": ["not", "a", "string"]}],
        [{"t": "result", "ok": 1, "value": 1}],
        # 2**64 - 1 is the largest int msgpack carries; an id is echoed back, never used.
        [{"t": "call", "id": 2**64 - 1, "op": "label.raise", "args": {"label": ["top"]}},
         {"t": "call", "id": 1, "op": "kv.get", "args": {"table": "t", "key": "k"},
          "extra": None}],
    ],
    ids=["op-list", "op-map", "op-bytes", "type-list", "type-map", "error-not-str",
         "ok-not-bool", "violation-after-call"],
)
def test_hostile_frame_is_a_protocol_violation(hostile: Sandbox, bodies: list) -> None:
    mon = FakeMonitor()
    out = hostile.run({"attack": "frames", "bodies": bodies}, {}, mon)
    assert out.status == "protocol", out
    assert out.error and out.error.startswith("protocol violation")
    assert out.pid is not None
    _wait_gone(out.pid)


def test_result_sent_twice_and_calls_after_it_are_ignored(hostile: Sandbox) -> None:
    mon = FakeMonitor()
    out = hostile.run({"attack": "frames", "bodies": [
        {"t": "result", "ok": True, "value": "first"},
        {"t": "result", "ok": True, "value": "second"},
        {"t": "call", "id": 1, "op": "kv.put", "args": {"table": "t", "key": "k", "value": 1}},
    ]}, {}, mon)
    assert out.status == "ok" and out.value == "first", out
    assert mon.calls == []  # nothing after the result is served
    _wait_gone(out.pid)  # type: ignore[arg-type]


def test_calls_whose_replies_are_never_read_are_a_protocol_violation(hostile: Sandbox) -> None:
    mon = FakeMonitor()
    mon.store[("t", "big")] = "x" * (1 << 20)  # each reply is ~1 MiB
    out = hostile.run({"attack": "never_read", "calls": 200}, {}, mon)
    assert out.status == "protocol", out
    assert "left unread" in (out.error or "")
    assert len(mon.calls) < 100  # stopped long before 200 MiB of replies piled up
    _wait_gone(out.pid)  # type: ignore[arg-type]


def _open_fds(sb: Sandbox) -> int:
    """Descriptors of this process, once the sandbox holds exactly its pool of waiting
    children (three descriptors each, taken in as the zygote reports them)."""
    end = time.monotonic() + 10
    while True:
        with sb._ctrl_lock:
            sb._pump(0.05)
            ready = len(sb._ready)
        if ready == sb.spec.prefork or time.monotonic() > end:
            break
    assert ready == sb.spec.prefork, "the pool did not refill"
    return len(os.listdir("/proc/self/fd"))


def test_descriptors_passed_by_the_child_never_land_in_the_monitor(hostile: Sandbox) -> None:
    before = _open_fds(hostile)
    for _ in range(5):
        out = hostile.run({"attack": "pass_fds"}, {}, FakeMonitor())
        assert out.status == "ok" and out.value == "public", out
    # recv() without a control buffer: the kernel discards SCM_RIGHTS descriptors.
    assert _open_fds(hostile) <= before


def test_a_frame_of_empty_lists_is_refused_before_it_costs_the_monitor_a_gigabyte(
        hostile: Sandbox) -> None:
    """16 MiB of one-byte empty lists decoded into 1.2 GB and 20 s of monitor CPU (review);
    a frame may now hold one list or map per 16 bytes of its size."""
    mon = FakeMonitor()
    out = hostile.run({"attack": "empty_lists", "bytes": hostile.spec.max_message_bytes},
                      {}, mon)
    assert out.status == "protocol", out
    assert "lists and maps" in (out.error or ""), out.error
    assert mon.calls == []
    _wait_gone(out.pid)  # type: ignore[arg-type]
