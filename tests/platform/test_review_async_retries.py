"""Review: retries of an asynchronous invoke never let its start label count a high failure.

An attempt starts at L, raises to H and then fails or not depending on H data. Retrying it
at L re-ran everything it does at L (here: one more invocation at L, as observable in the
set of invocations at L and in any L write before the raise) exactly when the H part failed.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from trapeze.labels import Lattice
from trapeze.monitor import Invocation, MemoryAudit, Monitor
from trapeze.runtime.invoker import FunctionLimits, Invoker
from trapeze.store import open_store

LATTICE = {"bottom": ["public"], "public": ["secret"], "secret": ["top"]}


class _Outcome:
    def __init__(self, status: str, value: Any = None, error: str | None = None) -> None:
        self.status, self.value, self.error = status, value, error
        self.log, self.duration_s = "", 0.0


class RaiseThenMaybeFail:
    """Starts (at whatever label the runtime gives it), raises to secret, fails iff told."""

    def __init__(self) -> None:
        self.starts: list[str] = []
        self.lock = threading.Lock()

    def run(self, event: Any, context: dict[str, Any], on_call: Any) -> _Outcome:
        with self.lock:
            self.starts.append(on_call("label.current", {}))
        on_call("label.raise", {"label": "secret"})
        if event["secret_bit"]:
            return _Outcome("error", error="RuntimeError: depends on the secret")
        return _Outcome("ok", value=None)


class _Sink:
    def record_log(self, inv: Invocation, text: str) -> None:
        pass


def _starts_at_public(tmp_path: Path, secret_bit: bool) -> list[str]:
    lattice = Lattice.from_hasse(LATTICE)
    store = open_store(f"sqlite:///{tmp_path / f'{secret_bit}.db'}", lattice)
    monitor = Monitor(lattice, store, MemoryAudit())
    runner = RaiseThenMaybeFail()
    invoker = Invoker(monitor, {"f": runner}, {"f": FunctionLimits(5.0, 4, retries=2)}, _Sink())
    monitor.dispatcher = invoker
    try:
        parent = Invocation("parent", "caller", "public", "public", time.time() + 30)
        monitor.handle(parent, "functions.invoke_async", {"function": "f",
                                                          "event": {"secret_bit": secret_bit}})
        deadline = time.monotonic() + 10
        while invoker.busy() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not invoker.busy()
        return runner.starts
    finally:
        invoker.close()
        store.close()


def test_async_retry_after_a_high_failure_is_not_visible_at_the_start_label(
        tmp_path: Path) -> None:
    quiet = _starts_at_public(tmp_path, secret_bit=False)
    failing = _starts_at_public(tmp_path, secret_bit=True)
    assert quiet == ["public"]
    # The invocations at public are the same whatever the secret; the retries (2 of them)
    # still happen, at the label the failure happened at.
    assert [s for s in failing if s == "public"] == ["public"]
    assert failing == ["public", "secret", "secret"]
