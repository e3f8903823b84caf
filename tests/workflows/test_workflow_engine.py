"""The workflow engine against each backend (a SQLite file, a PostgreSQL database), with the
in-process fake function table."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from trapeze.errors import FlowError, InvalidArgument, NotFound
from trapeze.labels import Lattice
from trapeze.policy.specs import WorkflowSpec
from trapeze.runtime.asl import AslError
from trapeze.runtime.engine_store import EngineDB
from trapeze.runtime.workflows import ExecutionAlreadyExists, WorkflowEngine

SCALE = 0.01  # Wait and Retry intervals shrink 100x in these tests


_ENGINES: list[WorkflowEngine] = []


@pytest.fixture(autouse=True)
def _stop_engines(db: Any) -> Any:
    """Stop every engine a test made before its tables close (threads may still run)."""
    yield
    while _ENGINES:
        _ENGINES.pop().stop(5)


def make(db: Any, lattice: Lattice, invoke: Any, **docs: dict[str, Any]) -> WorkflowEngine:
    specs = {n: WorkflowSpec(n, Path(f"/{n}.json"), (), d) for n, d in docs.items()}
    names = getattr(invoke, "table", {}).keys()
    eng = WorkflowEngine(db, lattice, specs, invoke, functions=set(names), time_scale=SCALE)
    _ENGINES.append(eng)
    return eng


def run(eng: WorkflowEngine, wf: str, inp: Any, label: str = "public",
        name: str | None = None) -> str:
    arn = eng.start(wf, name, inp, label)["executionArn"]
    assert eng.wait(arn, 20)
    return arn


def task(resource: str, nxt: str | None = None, **extra: Any) -> dict[str, Any]:
    st = {"Type": "Task", "Resource": resource, **extra}
    st.update({"Next": nxt} if nxt else {"End": True})
    return st


EVERY_STATE = {
    "StartAt": "Prepare",
    "States": {
        "Prepare": {"Type": "Pass", "Parameters": {"n.$": "$.n", "kind": "order",
                                                   "exec.$": "$$.Execution.Name"},
                    "ResultPath": "$.prepared", "Next": "Double"},
        "Double": task("double", "Route", InputPath="$.prepared", ResultPath="$.doubled",
                       ResultSelector={"value.$": "$.value"}),
        "Route": {"Type": "Choice", "Choices": [
            {"And": [{"Variable": "$.doubled.value", "NumericGreaterThan": 100},
                     {"Not": {"Variable": "$.kind", "StringEquals": "free"}}],
             "Next": "TooBig"},
            {"Or": [{"Variable": "$.doubled.value", "NumericLessThanEquals": 100},
                    {"Variable": "$.missing", "IsPresent": True}],
             "Next": "Pause"},
        ], "Default": "TooBig"},
        "Pause": {"Type": "Wait", "SecondsPath": "$.pause", "Next": "Fan"},
        "Fan": {"Type": "Parallel", "ResultPath": "$.fan", "Next": "Flag", "Branches": [
            {"StartAt": "A", "States": {"A": task("double", InputPath="$.prepared")}},
            {"StartAt": "B", "States": {
                "B": {"Type": "Pass", "Result": {"const": True}, "Next": "BWait"},
                "BWait": {"Type": "Wait", "Seconds": 1, "Next": "BDone"},
                "BDone": {"Type": "Succeed"}}},
        ]},
        "Flag": {"Type": "Choice", "Choices": [
            {"Variable": "$.fan[1].const", "BooleanEquals": True, "Next": "Done"}],
            "Default": "TooBig"},
        "Done": {"Type": "Succeed", "OutputPath": "$.fan"},
        "TooBig": {"Type": "Fail", "Error": "TooBig", "Cause": "the value is over 100"},
    },
}


def double(event: Any, ctx: Any) -> dict[str, Any]:
    return {"value": event["n"] * 2, "noise": 1}


def test_every_state_type(db: Any, lattice: Lattice, fake: Any) -> None:
    eng = make(db, lattice, fake({"double": double}), main=EVERY_STATE)
    ok = eng.describe(run(eng, "main", {"n": 21, "pause": 1}, name="small"), "public")
    assert ok["status"] == "SUCCEEDED", ok
    assert ok["output"] == [{"value": 42, "noise": 1}, {"const": True}]
    entered = [e["state"] for e in ok["history"] if e["type"] == "StateEntered"]
    assert entered[:5] == ["Prepare", "Double", "Route", "Pause", "Fan"]
    assert {"A", "B", "BWait", "BDone", "Flag", "Done"} <= set(entered)

    bad = eng.describe(run(eng, "main", {"n": 60, "pause": 0}, name="big"), "public")
    assert (bad["status"], bad["error"], bad["cause"]) == ("FAILED", "TooBig",
                                                          "the value is over 100")
    assert [x["name"] for x in eng.list("public")] == ["small", "big"]


RETRY_CATCH = {
    "StartAt": "Flaky",
    "States": {
        "Flaky": task("flaky", "Broken", Retry=[
            {"ErrorEquals": ["Throttled"], "IntervalSeconds": 1, "MaxAttempts": 3,
             "BackoffRate": 2.0}]),
        "Broken": task("broken", "Slow", Retry=[
            {"ErrorEquals": ["States.TaskFailed"], "IntervalSeconds": 1, "MaxAttempts": 1}],
            Catch=[{"ErrorEquals": ["KeyError"], "Next": "Slow", "ResultPath": "$.caught"}]),
        "Slow": task("slow", "Final", TimeoutSeconds=5,
                     Catch=[{"ErrorEquals": ["States.Timeout"], "ResultPath": "$.timeout",
                             "Next": "Final"}]),
        "Final": {"Type": "Pass", "End": True},
    },
}


def test_retry_and_catch(db: Any, lattice: Lattice, fake: Any) -> None:
    calls = {"flaky": 0, "broken": 0}

    class Throttled(Exception):
        pass

    def flaky(event: Any, ctx: Any) -> Any:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise Throttled("slow down")
        return {"tries": calls["flaky"]}

    def broken(event: Any, ctx: Any) -> Any:
        calls["broken"] += 1
        raise KeyError("price")

    def slow(event: Any, ctx: Any) -> Any:
        time.sleep(0.1)  # over TimeoutSeconds (5 s scaled to 0.05 s)
        return "late"

    eng = make(db, lattice, fake({"flaky": flaky, "broken": broken, "slow": slow}),
               rc=RETRY_CATCH)
    d = eng.describe(run(eng, "rc", {"id": 1}), "public")
    assert d["status"] == "SUCCEEDED", d
    assert calls == {"flaky": 3, "broken": 2}
    assert d["output"]["caught"]["Error"] == "KeyError"
    assert d["output"]["timeout"]["Error"] == "States.Timeout"
    kinds = [e["type"] for e in d["history"]]
    assert kinds.count("TaskRetryScheduled") == 3 and kinds.count("StateCaught") == 2


RAISING = {
    "StartAt": "Read",
    "States": {
        "Read": task("read_secret", "Use"),
        "Use": task("use", "Fan"),
        "Fan": {"Type": "Parallel", "Next": "After", "Branches": [
            {"StartAt": "P1", "States": {"P1": task("branch")}},
            {"StartAt": "P2", "States": {"P2": task("plain")}},
        ]},
        "After": task("use", None),
    },
}


def test_a_raise_in_a_step_raises_every_later_step(db: Any, lattice: Lattice,
                                                   fake: Any) -> None:
    def read_secret(event: Any, ctx: Any) -> Any:
        ctx.raise_to("alice")
        return {"secret": "alice's"}

    f = fake({"read_secret": read_secret, "use": lambda e, c: e, "branch": lambda e, c: 1,
              "plain": lambda e, c: 2})
    eng = make(db, lattice, f, wf=RAISING)
    arn = run(eng, "wf", {})
    calls = [(fn, lab) for fn, _, lab in f.calls]
    assert calls[:2] == [("read_secret", "public"), ("use", "alice")]
    assert sorted(calls[2:4]) == [("branch", "alice"), ("plain", "alice")]  # concurrent
    assert calls[4:] == [("use", "alice")]
    assert eng.describe(arn, "alice")["status"] == "SUCCEEDED"
    low = eng.describe(arn, "public")
    assert (low["status"], low["output"], low["label"]) == ("RUNNING", None, "public")
    assert {e["label"] for e in low["history"]} == {"public"}
    assert [e["type"] for e in low["history"]] == ["ExecutionStarted", "StateEntered"]
    assert eng.describe(arn, "bob")["status"] == "RUNNING"


def test_a_raise_in_one_parallel_branch_joins(db: Any, lattice: Lattice, fake: Any) -> None:
    def branch(event: Any, ctx: Any) -> Any:
        ctx.raise_to("bob")
        return "b"

    f = fake({"read_secret": lambda e, c: {}, "use": lambda e, c: e, "branch": branch,
              "plain": lambda e, c: "p"})
    eng = make(db, lattice, f, wf=RAISING)
    arn = run(eng, "wf", {})
    assert f.calls[-1] == ("use", ["b", "p"], "bob")  # the step after the join runs at bob
    assert eng.describe(arn, "bob")["output"] == ["b", "p"]
    low = eng.describe(arn, "public")
    assert low["status"] == "RUNNING"
    # The public branch's own steps stay visible at public; the raised branch's end does not.
    low_kinds = [(e["type"], e["state"]) for e in low["history"]]
    assert ("StateExited", "P2") in low_kinds and ("StateExited", "P1") not in low_kinds


def test_branch_labels_without_a_join_fail_at_top(db: Any, fake: Any) -> None:
    lat = Lattice.from_hasse({"public": ["alice", "bob"], "alice": ["c", "d"],
                              "bob": ["c", "d"], "c": ["top"], "d": ["top"], "top": []})

    def raiser(to: str) -> Any:
        def fn(event: Any, ctx: Any) -> Any:
            ctx.raise_to(to)
            return to
        return fn

    doc = {"StartAt": "Fan", "States": {"Fan": {"Type": "Parallel", "End": True, "Branches": [
        {"StartAt": "A", "States": {"A": task("to_alice")}},
        {"StartAt": "B", "States": {"B": task("to_bob")}}]}}}
    f = fake({"to_alice": raiser("alice"), "to_bob": raiser("bob")})
    # The fake checks raises against the shared test lattice; alice/bob exist in both.
    eng = WorkflowEngine(db, lat, {"wf": WorkflowSpec("wf", Path("/wf.json"), (), doc)}, f,
                         time_scale=SCALE)
    _ENGINES.append(eng)
    arn = run(eng, "wf", {})
    top = eng.describe(arn, "top")
    assert (top["status"], top["error"]) == ("FAILED", "Trapeze.NoJoin")
    assert "without a join" in top["cause"] and "'Fan'" in top["cause"]
    for viewer in ("public", "alice", "c"):
        assert eng.describe(arn, viewer)["status"] == "RUNNING"


IDEMPOTENT = {
    "StartAt": "One",
    "States": {
        "One": task("effect", "Nap", Parameters={"step": "one"}),
        "Nap": {"Type": "Wait", "Seconds": 100, "Next": "Two"},  # 1 s scaled
        "Two": task("effect", "Three", Parameters={"step": "two"}),
        "Three": task("effect", None, Parameters={"step": "three"}),
    },
}


def test_restart_mid_workflow_resumes_once_per_step(db_url: str, lattice: Lattice,
                                                    fake: Any) -> None:
    effects: dict[str, int] = {}  # invocations per step: the "store" of idempotent effects
    in_two, release = threading.Event(), threading.Event()

    def effect(event: Any, ctx: Any) -> Any:
        effects[event["step"]] = effects.get(event["step"], 0) + 1
        if event["step"] == "two" and not release.is_set():
            in_two.set()
            release.wait(5)  # the process "dies" while step two runs
        return event["step"]

    # First life: dies during the Wait — resumed with the time left. Stopped once the Wait
    # is recorded (step one's result with it), not after a fixed 0.05 s: on a loaded machine
    # step one had not run by then, or the Wait (0.2 s then) was over and step two ran.
    db1 = EngineDB.open(db_url)
    eng1 = make(db1, lattice, fake({"effect": effect}), wf=IDEMPOTENT)
    arn = eng1.start("wf", "order-1", {}, "public")["executionArn"]
    deadline = time.monotonic() + 30
    while not any(e["type"] == "WaitStarted" for e in eng1.describe(arn, "public")["history"]):
        assert time.monotonic() < deadline, "the execution never reached its Wait"
        time.sleep(0.005)
    eng1.stop()
    db1.close()
    assert effects == {"one": 1}

    # Second life: dies while step two is in flight.
    db2 = EngineDB.open(db_url)
    eng2 = make(db2, lattice, fake({"effect": effect}), wf=IDEMPOTENT)
    assert eng2.resume() == [arn]
    assert in_two.wait(5)
    stopper = threading.Thread(target=eng2.stop)
    stopper.start()
    release.set()
    stopper.join()
    db2.close()

    # Third life: finishes. Step one never ran again; step two ran again (in flight).
    db3 = EngineDB.open(db_url)
    eng3 = make(db3, lattice, fake({"effect": effect}), wf=IDEMPOTENT)
    assert eng3.resume() == [arn]
    assert eng3.wait(arn, 10)
    d = eng3.describe(arn, "public")
    db3.close()
    assert d["status"] == "SUCCEEDED" and d["output"] == "three"
    assert effects == {"one": 1, "two": 2, "three": 1}
    exited = [e["state"] for e in d["history"] if e["type"] == "StateExited"]
    assert exited == ["One", "Nap", "Two", "Three"]


def test_unique_names_among_visible_executions(db: Any, lattice: Lattice, fake: Any) -> None:
    doc = {"StartAt": "S", "States": {"S": {"Type": "Succeed"}}}
    eng = make(db, lattice, fake({}), wf=doc)
    eng.start("wf", "p-1", {}, "alice")
    # A public starter cannot know of alice's execution: its start succeeds.
    low = eng.start("wf", "p-1", {}, "public")
    with pytest.raises(ExecutionAlreadyExists, match="p-1"):
        eng.start("wf", "p-1", {}, "public")
    with pytest.raises(ExecutionAlreadyExists):
        eng.start("wf", "p-1", {}, "bob")  # sees the public one
    with pytest.raises(ExecutionAlreadyExists):
        eng.start("wf", "p-1", {}, "alice")
    assert [x["executionArn"] for x in eng.list("public")] == [low["executionArn"]]
    assert len(eng.list("alice")) == 2 and len(eng.list("bob")) == 1
    with pytest.raises(NotFound):
        eng.start("nope", None, {}, "public")
    with pytest.raises(InvalidArgument):
        eng.start("wf", "has space", {}, "public")


def _normal(view: Any) -> Any:
    """A view without the values that differ between any two runs (times, random ids)."""
    if isinstance(view, list):
        return [_normal(v) for v in view]
    if isinstance(view, dict):
        return {k: ("*" if k in ("time", "startDate", "stopDate", "executionArn", "id",
                                 "until") else _normal(v)) for k, v in view.items()}
    return view


@pytest.mark.parametrize("high", ["absent", "ok", "fail", "hang"])
def test_low_listing_is_the_same_whatever_happens_above(db_url: str, lattice: Lattice,
                                                        fake: Any, high: str) -> None:
    hang = threading.Event()

    def secret_step(event: Any, ctx: Any) -> Any:
        ctx.raise_to("alice")
        if high == "fail":
            raise ValueError("alice's secret was odd")
        if high == "hang":
            hang.wait(2)
        return {"secret": 42}

    doc = {"StartAt": "Public", "States": {
        "Public": task("public_step", "Secret"),
        "Secret": task("secret_step", "Later"),
        "Later": task("public_step", None)}}
    high_doc = {"StartAt": "H", "States": {"H": task("secret_step")}}
    db = EngineDB.open(db_url)
    eng = make(db, lattice, fake({"public_step": lambda e, c: {"n": 1},
                                  "secret_step": secret_step}), wf=doc, high=high_doc)
    try:
        low = eng.start("wf", "order", {"x": 1}, "public")["executionArn"]
        if high != "absent":
            eng.start("high", "h", {}, "alice")
            eng.start("wf", "h2", {}, "bob")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # until the public part is over
            hist = eng.describe(low, "top")["history"]
            if any(e["label"] == "alice" for e in hist):
                break
            time.sleep(0.02)
        time.sleep(0.1)
        view = _normal([eng.list("public"), eng.describe(low, "public")])
    finally:
        hang.set()
        eng.stop()
        db.close()
    assert view == _normal([
        [{"executionArn": "*", "workflow": "wf", "name": "order", "startDate": "*",
          "startLabel": "public", "status": "RUNNING", "label": "public", "output": None,
          "error": None, "cause": None, "stopDate": None}],
        view[1],
    ])
    d = view[1]
    assert d["status"] == "RUNNING" and d["input"] == {"x": 1}
    assert [(e["type"], e["state"]) for e in d["history"]] == [
        ("ExecutionStarted", None), ("StateEntered", "Public"), ("StateExited", "Public"),
        ("StateEntered", "Secret")]


ACTIVITY = {
    "StartAt": "Await",
    "States": {
        "Await": {"Type": "Task", "Resource": "activity:photo", "TimeoutSeconds": 300,
                  "ResultPath": "$.photo", "Next": "Done",
                  "Catch": [{"ErrorEquals": ["States.Timeout"], "ResultPath": "$.error",
                             "Next": "Done"}]},
        "Done": {"Type": "Pass", "End": True},
    },
}


def test_activity_task_completed_at_its_label(db: Any, lattice: Lattice, fake: Any) -> None:
    eng = make(db, lattice, fake({}), wf=ACTIVITY)
    arn = eng.start("wf", "p", {"id": 7}, "alice")["executionArn"]
    assert eng.get_activity_task("photo", "public", wait_s=0.2) is None
    assert eng.get_activity_task("photo", "top", wait_s=0.2) is None
    task_ = eng.get_activity_task("photo", "alice", wait_s=5)
    assert task_ is not None and task_["input"] == {"id": 7}
    token = task_["taskToken"]
    # Not visible to bob or public: exactly like an unknown token.
    for who in ("bob", "public"):
        with pytest.raises(NotFound, match="TaskDoesNotExist"):
            eng.complete_task(token, {"url": "x"}, caller_label=who)
    with pytest.raises(NotFound, match="TaskDoesNotExist"):
        eng.complete_task("forged", {}, caller_label="top")
    with pytest.raises(FlowError, match="exactly"):
        eng.complete_task(token, {"url": "x"}, caller_label="top")
    assert eng.complete_task(token, {"url": "x"}, caller_label="alice") == {"completed": True}
    with pytest.raises(InvalidArgument, match="TaskTimedOut"):
        eng.complete_task(token, {"url": "y"}, caller_label="alice")
    assert eng.wait(arn, 10)
    d = eng.describe(arn, "alice")
    assert d["status"] == "SUCCEEDED" and d["output"] == {"id": 7, "photo": {"url": "x"}}


def _ask(timeout_s: int) -> dict[str, Any]:
    return {"StartAt": "Ask", "States": {
        "Ask": {"Type": "Task", "Resource": "notify.waitForTaskToken",
                "TimeoutSeconds": timeout_s, "Next": "Done",
                "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.err",
                           "Next": "Done"}]},
        "Done": {"Type": "Pass", "End": True}}}


def test_callback_task_timeout_and_failure(db: Any, lattice: Lattice, fake: Any) -> None:
    seen: list[str] = []

    def notify(event: Any, ctx: Any) -> None:
        seen.append(event["TaskToken"])

    # The failure is completed by this thread after it saw the token: under the 0.1 s
    # timeout of the first workflow it could time out first on a loaded machine, so the
    # second one waits up to 30 s (scaled) for it.
    eng = make(db, lattice, fake({"notify": notify}), quick=_ask(10), wf=_ask(3000))
    timed_out = run(eng, "quick", {"n": 1}, name="t")  # nobody completes: 0.1 s scaled
    assert eng.describe(timed_out, "public")["output"]["err"]["Error"] == "States.Timeout"
    arn = eng.start("wf", "f", {"n": 2}, "public")["executionArn"]
    deadline = time.monotonic() + 5
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    eng.complete_task(seen[1], error={"Error": "PhotoRejected", "Cause": "blurry"},
                      caller_label="public")
    assert eng.wait(arn, 10)
    assert eng.describe(arn, "public")["output"]["err"] == {"Error": "PhotoRejected",
                                                            "Cause": "blurry"}


# Validation happens before any table is touched: once, on SQLite, is enough.
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("doc", "message"), [
    ({"States": {"A": {"Type": "Succeed"}}}, "missing StartAt"),
    ({"StartAt": "A", "States": {"A": {"Type": "Pass", "Next": "Nowhere"}}},
     "state 'A': Next names an unknown state 'Nowhere'"),
    ({"StartAt": "A", "States": {"A": {"Type": "Map", "End": True}}},
     "state 'A': unsupported Type 'Map'"),
    ({"StartAt": "A", "States": {"A": {"Type": "Pass"}}}, "state 'A': needs Next"),
    ({"StartAt": "A", "States": {"A": {"Type": "Succeed"}, "B": {"Type": "Succeed"}}},
     "state 'B' is unreachable"),
    ({"StartAt": "A", "States": {"A": task("no_such_fn")}},
     "state 'A': Resource names an unknown function 'no_such_fn'"),
    ({"StartAt": "P", "States": {"P": {"Type": "Parallel", "End": True, "Branches": [
        {"StartAt": "X", "States": {"X": {"Type": "Pass", "Next": "Y"}}}]}}},
     "state 'P': Branches[0]: state 'X': Next names an unknown state 'Y'"),
    ({"StartAt": "C", "States": {"C": {"Type": "Choice", "Choices": [
        {"Variable": "$.a", "NumericEquals": "1", "Next": "C"}]}}},
     "state 'C': Choices[0].NumericEquals takes a number"),
    ({"StartAt": "T", "States": {"T": task("double", Retry=[{"ErrorEquals": []}])}},
     "state 'T': Retry[0].ErrorEquals must be a non-empty list"),
])
def test_invalid_asl_names_the_state(db: Any, lattice: Lattice, fake: Any, doc: Any,
                                     message: str) -> None:
    with pytest.raises(AslError) as info:
        make(db, lattice, fake({"double": double}), bad=doc)
    assert message in str(info.value)
    assert str(info.value).startswith("workflow 'bad': ")


def test_start_from_is_enforced(db: Any, lattice: Lattice, fake: Any) -> None:
    doc = {"StartAt": "S", "States": {"S": {"Type": "Succeed"}}}
    spec = WorkflowSpec("wf", Path("/wf.json"), ("processor",), doc)
    eng = WorkflowEngine(db, lattice, {"wf": spec}, fake({}), time_scale=SCALE)
    _ENGINES.append(eng)
    with pytest.raises(FlowError, match="may not start"):
        eng.start("wf", None, {}, "public", starter="intruder")
    assert eng.wait(eng.start("wf", None, {}, "public", starter="processor")["executionArn"])
