"""Review: what a starter or a task completer at a low label can learn of higher work.

Engine-level (the fixtures of tests/conftest.py: a fake invoker that reports final labels the
way the runtime does); the dispatcher path is the one the monitor uses for guest calls.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from trapeze.errors import InvalidArgument
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


CALLBACK = {"StartAt": "Ask", "States": {
    "Ask": {"Type": "Task", "Resource": "notify.waitForTaskToken", "TimeoutSeconds": 1000,
            "End": True}}}


def _complete_after_notify(db: Any, lattice: Lattice, fake: Any, secret_fails: bool) -> Any:
    tokens: list[str] = []

    def notify(event: Any, ctx: Any) -> None:
        tokens.append(event["TaskToken"])  # at public: e.g. written to a public table
        ctx.raise_to("alice")
        if secret_fails:
            raise RuntimeError("depends on alice's data")

    eng = _make(db, lattice, fake({"notify": notify}), CALLBACK)
    arn = eng.start("wf", f"cb-{secret_fails}", {}, "public")["executionArn"]
    end = time.monotonic() + 5
    while not tokens and time.monotonic() < end:
        time.sleep(0.005)
    time.sleep(0.3)  # the notification has returned (and, before the fix, settled the token)
    try:
        answer: Any = eng.complete_task(tokens[0], {"done": 1}, caller_label="public")
    except InvalidArgument as e:
        answer = f"{type(e).__name__}: {e}"
    view = eng.describe(arn, "public")
    return answer, view["status"], [e["type"] for e in view["history"]]


def test_callback_notification_failing_above_the_token_is_invisible_to_its_completer(
        db: Any, lattice: Lattice, fake: Any) -> None:
    ok_world = _complete_after_notify(db, lattice, fake, secret_fails=False)
    fail_world = _complete_after_notify(db, lattice, fake, secret_fails=True)
    assert ok_world[0] == {"completed": True}
    assert fail_world == ok_world
