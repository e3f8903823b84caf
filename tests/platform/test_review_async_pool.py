"""Review: asynchronous invocations can neither wedge the runtime nor tell a low caller about
high ones.

1. Each pending asynchronous invocation had a driver (attempts, back-off) on the same thread
   pool as invocation bodies, and a driver waits for its body. With more invocations pending
   than the pool had threads (1,024 against 832 by default), drivers held every thread waiting
   for bodies queued behind them: nothing ever ran again (found in review). Drivers have a pool
   of their own now.
2. The bound on pending invocations was one counter for all labels, so high work filling it
   made a low `invoke_async` fail. The count that refuses a call at label L is now L's own.

The runner stands in for the confined child (as in test_review_async_retries.py): each
branch is what a hostile handler does through its guest calls.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trapeze.errors import LimitExceeded
from trapeze.labels import Lattice
from trapeze.monitor import Invocation, MemoryAudit, Monitor
from trapeze.runtime.invoker import FunctionLimits, Invoker
from trapeze.store import open_store


class _Outcome:
    def __init__(self, value: Any = None) -> None:
        self.status, self.value, self.error, self.log, self.duration_s = "ok", value, None, "", 0.0


class _Runner:
    def __init__(self) -> None:
        self.release = threading.Event()

    def run(self, event: Any, context: dict[str, Any], on_call: Any) -> _Outcome:
        if event == "spawn":
            for _ in range(32):
                on_call("functions.invoke_async", {"function": "f", "event": "work"})
        elif event == "block":
            self.release.wait(30)
        elif event == "work":
            time.sleep(0.01)
        return _Outcome(event)


class _Sink:
    def record_log(self, inv: Invocation, text: str) -> None:
        pass


def _invoker(tmp_path: Path) -> tuple[Invoker, _Runner, Monitor]:
    lattice = Lattice.from_hasse({"bottom": ["public"], "public": ["secret"], "secret": ["top"]})
    monitor = Monitor(lattice, open_store(f"sqlite:///{tmp_path / 's.db'}", lattice),
                      MemoryAudit())
    runner = _Runner()
    # One running invocation and a queue of 8: 17 body threads under the old sizing, and up
    # to 32 pending asynchronous invocations.
    invoker = Invoker(monitor, {"f": runner}, {"f": FunctionLimits(30.0, 1, 0)}, _Sink(),
                      concurrency=1, queue=8)
    monitor.dispatcher = invoker
    return invoker, runner, monitor


def test_more_pending_async_invocations_than_threads_do_not_wedge_the_runtime(
        tmp_path: Path) -> None:
    invoker, _runner, _monitor = _invoker(tmp_path)
    try:
        assert invoker.invoke("f", "spawn", label="public").status == "ok"
        replies: list[Any] = []
        victim = threading.Thread(
            target=lambda: replies.append(invoker.invoke("f", "work", label="public")),
            daemon=True)
        victim.start()
        victim.join(30)
        assert replies and replies[0].status == "ok", "the runtime is wedged"
        deadline = time.monotonic() + 30
        while invoker.busy() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not invoker.busy()
    finally:
        invoker.close()


@pytest.fixture
def blocked_invoker(tmp_path: Path) -> Iterator[Invoker]:
    """An invoker whose asynchronous work blocks (and so stays pending) until the test ends."""
    invoker, runner, _monitor = _invoker(tmp_path)
    try:
        yield invoker
    finally:
        runner.release.set()
        invoker.close()


HIGH = Invocation("h", "f", "secret", "secret", time.time() + 3600)
LOW = Invocation("l", "f", "public", "public", time.time() + 3600)


def test_pending_high_work_never_refuses_a_low_async_invoke(blocked_invoker: Invoker) -> None:
    invoker = blocked_invoker
    # Fill the pending invocations at secret: each blocks until released.
    for _ in range(invoker._max_pending_per_label):
        invoker.invoke_async(HIGH, "f", "block", "secret")
    with pytest.raises(LimitExceeded, match="'secret'"):
        invoker.invoke_async(HIGH, "f", "block", "secret")
    # A public caller is refused only by work public callers started: not when it starts
    # work at secret either, which is where secret code filled the queue (review,
    # session 6: the refusal reached the public caller, a bit about secret activity).
    invoker.invoke_async(LOW, "f", "work", "public")
    invoker.invoke_async(LOW, "f", "work", "secret")


def test_the_async_quota_counts_callers_at_one_label(blocked_invoker: Invoker) -> None:
    """The refusal a caller at L can get depends on what callers at L started, whatever the
    target label: here public callers fill their quota with work at secret."""
    invoker = blocked_invoker
    for _ in range(invoker._max_pending_per_label):
        invoker.invoke_async(LOW, "f", "block", "secret")
    with pytest.raises(LimitExceeded, match="from callers at label 'public'"):
        invoker.invoke_async(LOW, "f", "block", "public")
    invoker.invoke_async(HIGH, "f", "work", "secret")  # secret's own quota is untouched
