"""Review: what a starter or a task completer at a low label can learn of higher work.

Engine-level (the fixtures of tests/conftest.py: a fake invoker that reports final labels the
way the runtime does); the dispatcher path is the one the monitor uses for guest calls.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from trapeze.labels import Lattice
from trapeze.policy.specs import WorkflowSpec
from trapeze.runtime.workflows import Engines, ExecutionAlreadyExists, WorkflowEngine

_ENGINES: list[WorkflowEngine] = []


@pytest.fixture(autouse=True)
def _stop_engines(db: Any) -> Any:
    yield
    while _ENGINES:
        _ENGINES.pop().stop(5)


def _make(db: Any, lattice: Lattice, invoke: Any, doc: dict[str, Any]) -> WorkflowEngine:
    spec = WorkflowSpec("wf", Path("/wf.json"), (), doc)
    eng = WorkflowEngine(db, lattice, {"wf": spec}, invoke,
                         functions=set(getattr(invoke, "table", {})), time_scale=0.01)
    _ENGINES.append(eng)
    return eng


SUCCEED = {"StartAt": "S", "States": {"S": {"Type": "Succeed"}}}


def test_name_clash_is_decided_at_the_starters_label(db: Any, lattice: Lattice,
                                                     fake: Any) -> None:
    eng = _make(db, lattice, fake({}), SUCCEED)
    engines = SimpleNamespace(workflows=eng)
    eng.start("wf", "order-1", {}, "alice")  # alice's own execution, unknown to public
    # A public function starting at alice (allowed: the label it names is above its own)
    # used to get ExecutionAlreadyExists here, learning that alice's execution exists.
    public_fn = SimpleNamespace(function="starter", label="public")
    out = Engines.workflow_start(engines, public_fn, "wf", "order-1", {}, "alice")
    assert out["name"] == "order-1"
    # A clash the starter can see is still reported.
    eng.start("wf", "order-2", {}, "public")
    with pytest.raises(ExecutionAlreadyExists):
        Engines.workflow_start(engines, public_fn, "wf", "order-2", {}, "alice")
