"""Review of the monitor's op handlers (monitor.py `_ops`), one by one.

Found, and left open as a documented residual (docs/guarantees.md, "Resource exhaustion";
no test here, since its two worlds differ only after a wait): a per-label quota slot
(`[limits] workflow_executions`, the async pending bound) is held while the work it counts
runs above the caller, so a caller that fills its quota can tell from a later refusal
whether that work has ended. Closing it means counting work at the label it has risen to
and queueing it there instead of refusing, a change of the quota's design.

Sound (pinned here, passing): the ops table is exactly the wire protocol's OPS; an
unknown op is refused; label.current answers the current label after a raise; a refused
label.raise / invoke_async / streams.put / workflows.start at a lower label writes nothing
(no record, no execution, no pending invocation) and its audit entry is at the caller's
label; streams.put at a higher label answers a hidden sequence, the same whatever secret
put before; a kv.put with a bad table
writes nothing.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from trapeze.errors import FlowError, InvalidArgument
from trapeze.labels import Lattice
from trapeze.monitor import Invocation, MemoryAudit, Monitor
from trapeze.runtime.engine_store import EngineDB
from trapeze.runtime.invoker import InvocationResult
from trapeze.runtime.workflows import Engines
from trapeze.sandbox.wire import OPS
from trapeze.store import open_store

LATTICE = Lattice.from_hasse({"bottom": ["public"], "public": ["secret"], "secret": ["top"]})


def _inv(label: str) -> Invocation:
    return Invocation(f"r-{label}-{time.monotonic_ns()}", "f", label, label, time.time() + 60)


# ------------------------------------------------------------------------------- sound
def test_ops_table_is_exactly_the_wire_protocol() -> None:
    monitor = Monitor(LATTICE, None, MemoryAudit())  # type: ignore[arg-type]
    assert set(monitor._ops) == set(OPS)
    with pytest.raises(InvalidArgument):
        monitor.handle(_inv("public"), "activities.get_task", {})
    with pytest.raises(InvalidArgument):
        monitor.handle(_inv("public"), "_kv_get", {})


def test_label_current_follows_raises_and_refused_raise_is_audited_low(
        tmp_path: Path) -> None:
    audit = MemoryAudit()
    store = open_store(f"sqlite:///{tmp_path / 's.db'}", LATTICE)
    monitor = Monitor(LATTICE, store, audit)
    inv = _inv("public")
    assert monitor.handle(inv, "label.current", {}) == "public"
    monitor.handle(inv, "label.raise", {"label": "secret"})
    assert monitor.handle(inv, "label.current", {}) == "secret"
    with pytest.raises(FlowError):
        monitor.handle(inv, "label.raise", {"label": "public"})
    assert monitor.handle(inv, "label.current", {}) == "secret"
    refused = [e for e in audit.entries() if e.kind == "refused"]
    assert [e.label for e in refused] == ["secret"]
    # A kv.put after the raise lands at secret, not at the starting label.
    monitor.handle(inv, "kv.put", {"table": "t", "key": "k", "value": 1})
    assert store.get("t", "k", label="public") is None
    assert store.get("t", "k", label="secret") == 1
    with pytest.raises(InvalidArgument):
        monitor.handle(inv, "kv.put", {"table": "_sys", "key": "k2", "value": 1})
    store.close()


class _RecordingDispatcher:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def invoke_async(self, parent: Any, function: str, event: Any, label: str) -> str:
        self.calls.append(("invoke_async", label))
        return "id"

    def stream_put(self, parent: Any, stream: str, record: Any, pk: Any, label: str) -> Any:
        self.calls.append(("stream_put", label))
        return {}

    def workflow_start(self, parent: Any, wf: str, name: Any, event: Any, label: str) -> Any:
        self.calls.append(("workflow_start", label))
        return {}


@pytest.mark.parametrize("op,args", [
    ("functions.invoke_async", {"function": "f", "event": 1}),
    ("streams.put", {"stream": "s", "record": 1}),
    ("workflows.start", {"workflow": "w", "input": 1}),
])
def test_starts_use_the_current_label_and_refuse_lower_ones(op: str, args: dict[str, Any]
                                                            ) -> None:
    audit = MemoryAudit()
    d = _RecordingDispatcher()
    monitor = Monitor(LATTICE, None, audit, dispatcher=d)  # type: ignore[arg-type]
    inv = _inv("public")
    monitor.raise_label(inv, "secret")
    monitor.handle(inv, op, dict(args))  # no label: the current one, not the start's
    with pytest.raises(FlowError):
        monitor.handle(inv, op, dict(args, label="public"))
    with pytest.raises(InvalidArgument):
        monitor.handle(inv, op, dict(args, label=["secret"]))
    monitor.handle(inv, op, dict(args, label="top"))
    assert [lab for _, lab in d.calls] == ["secret", "top"]  # the refused ones did nothing
    assert all(e.label == "secret" for e in audit.entries() if e.kind == "refused")


def test_stream_put_above_the_caller_answers_no_count(tmp_path: Path) -> None:
    """streams.put at label= above the caller: the reply is the same whatever number of
    records secret put before (the real glue, Engines.stream_put, behind the handler)."""
    from trapeze.policy.specs import StreamSpec
    from trapeze.runtime.streams import StreamEngine

    def world(n_secret: int) -> Any:
        db = EngineDB.open(f"sqlite:///{tmp_path / f's{n_secret}.db'}")
        eng = StreamEngine(db, LATTICE, {"events": StreamSpec("events", consumers=())},
                           lambda f, e, lab: InvocationResult("ok", label=lab))
        for i in range(n_secret):
            eng.put("events", {"i": i}, None, "secret")
        engines = SimpleNamespace(streams=eng)
        dispatcher = SimpleNamespace(stream_put=lambda parent, s, r, pk, lab:
                                     Engines.stream_put(engines, parent, s, r, pk, lab))  # type: ignore[arg-type]
        monitor = Monitor(LATTICE, None, MemoryAudit(), dispatcher=dispatcher)  # type: ignore
        try:
            return monitor.handle(_inv("public"), "streams.put",
                                  {"stream": "events", "record": 1, "label": "secret"})
        finally:
            db.close()

    assert world(0) == world(3)
    assert world(0)["sequence"].startswith("hidden")
