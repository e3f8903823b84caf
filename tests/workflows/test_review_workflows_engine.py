"""Review findings on the workflow engine (each test failed before its fix).

* F3: a normal shutdown (Runtime.close) drained the invoker while the engines still ran; the
  steps it refused ("the runtime is shutting down") were recorded as task failures, so the
  executions failed for good. The engines now stop first, and a refused invocation is never
  a failure (asked again later, or left for resume).
* F4: history event ids were a global counter: a viewer's description of its own execution
  showed gaps as large as the events other labels recorded meanwhile.
* F5: nothing bounded the executions running at once (one thread each).
* F6: a callback notification that failed above the token's label was not recorded as done,
  so after a restart during the wait it ran again at the token's label; after a success it
  did not: the low label counted its notifications and learnt the higher outcome.
* NUL: PostgreSQL refuses NUL in text; an error or cause holding one broke the engine's
  writes (and a NUL in a token, an activity or an execution name, its reads).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from trapeze import App
from trapeze.errors import InvalidArgument, LimitExceeded, NotFound
from trapeze.labels import Lattice
from trapeze.policy.specs import WorkflowSpec
from trapeze.runtime.engine_store import EngineDB
from trapeze.runtime.invoker import InvocationResult
from trapeze.runtime.workflows import WorkflowEngine, workflow_describe

SCALE = 0.01

_ENGINES: list[WorkflowEngine] = []


@pytest.fixture(autouse=True)
def _stop_engines() -> Any:
    """Stop every engine a test made before its tables close (threads may still run)."""
    yield
    while _ENGINES:
        _ENGINES.pop().stop(5)


# What an invocation returns to the engines: the invoker's own result type.
Result = InvocationResult


def make(db: Any, lattice: Lattice, invoke: Any, functions: set[str], *,
         scale: float = SCALE, **kw: Any) -> WorkflowEngine:
    docs = kw.pop("docs")
    specs = {n: WorkflowSpec(n, Path(f"/{n}.json"), (), d) for n, d in docs.items()}
    eng = WorkflowEngine(db, lattice, specs, invoke, functions=functions, time_scale=scale,
                         **kw)
    _ENGINES.append(eng)
    return eng


def task(resource: str, nxt: str | None = None, **extra: Any) -> dict[str, Any]:
    st = {"Type": "Task", "Resource": resource, **extra}
    st.update({"Next": nxt} if nxt else {"End": True})
    return st


# ---------------------------------------------------------------------------------- F4
LOW = {"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 50, "Next": "Done"},
                                  "Done": {"Type": "Pass", "End": True}}}
HIGH = {"StartAt": "P1", "States": {"P1": {"Type": "Pass", "Next": "P2"},
                                    "P2": {"Type": "Pass", "Next": "P3"},
                                    "P3": {"Type": "Pass", "End": True}}}
# Hidden events of the *same* execution between visible ones: a Parallel whose first branch
# raises to alice and goes on there while the second stays public.
MIXED = {"StartAt": "Fan", "States": {"Fan": {"Type": "Parallel", "End": True, "Branches": [
    {"StartAt": "Up", "States": {"Up": task("up", "A1"), "A1": {"Type": "Pass", "Next": "A2"},
                                 "A2": {"Type": "Pass", "End": True}}},
    {"StartAt": "Slow", "States": {"Slow": task("slow", "B1"),
                                   "B1": {"Type": "Pass", "End": True}}}]}}}


def test_history_ids_show_no_other_events(db: Any, lattice: Lattice, fake: Any) -> None:
    def up(event: Any, ctx: Any) -> Any:
        ctx.raise_to("alice")
        return 1

    def slow(event: Any, ctx: Any) -> Any:
        time.sleep(0.3)  # the raised branch records its events meanwhile
        return 2

    eng = make(db, lattice, fake({"up": up, "slow": slow}), {"up", "slow"},
               docs={"low": LOW, "high": HIGH, "mixed": MIXED})
    low = eng.start("low", "mine", {}, "public")["executionArn"]
    time.sleep(0.1)  # in its Wait
    for i in range(3):  # other executions, at alice, record events meanwhile
        assert eng.wait(eng.start("high", f"theirs{i}", {}, "alice")["executionArn"], 10)
    assert eng.wait(low, 10)
    mine = eng.describe(low, "public")["history"]
    assert mine[-1]["type"] == "ExecutionSucceeded"
    assert [e["id"] for e in mine] == list(range(1, len(mine) + 1))

    mixed = eng.start("mixed", "both", {}, "public")["executionArn"]
    assert eng.wait(mixed, 10)
    public = eng.describe(mixed, "public")["history"]
    alice = eng.describe(mixed, "alice")["history"]
    assert len(alice) > len(public)  # some events are hidden from public
    assert [e["id"] for e in public] == list(range(1, len(public) + 1))
    assert [e["id"] for e in alice] == list(range(1, len(alice) + 1))


# ---------------------------------------------------------------------------------- F6
ASK = {"StartAt": "Ask", "States": {
    "Ask": {"Type": "Task", "Resource": "notify.waitForTaskToken", "TimeoutSeconds": 3,
            "End": True}}}


def _notifications_across_a_restart(db_url: str, lattice: Lattice, fake: Any,
                                     secret_bit: int) -> tuple[list[str], Any, Any]:
    notified: list[str] = []  # stands for a public-visible effect of the notification

    def notify(event: Any, ctx: Any) -> str:
        notified.append(ctx.label)
        ctx.raise_to("alice")
        if secret_bit:  # alice's secret decides success or failure
            raise RuntimeError("boom")
        return "ok"

    scale = 0.3  # the token's deadline: 0.9 s
    db1 = EngineDB.open(db_url)
    e1 = make(db1, lattice, fake({"notify": notify}), {"notify"}, scale=scale,
              docs={"wf": ASK})
    e1.resume()
    arn = e1.start("wf", f"x{secret_bit}", {}, "public")["executionArn"]
    # Stopped once the notification is recorded as done (its frame says so) and the token
    # is waited for. A fixed 0.4 s was the whole margin: on a loaded machine the record
    # could come later (the restart then notifies again), while past 0.9 s the token has
    # timed out and the execution ended before the restart.
    deadline = time.monotonic() + 30
    while not ((db1.frame(arn, "") or {}).get("retries") or {}).get("_notified"):
        assert time.monotonic() < deadline, "the notification was never recorded"
        time.sleep(0.005)
    e1.stop(5)
    db1.close()  # an ordinary restart
    db2 = EngineDB.open(db_url)
    try:
        e2 = make(db2, lattice, fake({"notify": notify}), {"notify"}, scale=scale,
                  docs={"wf": ASK})
        assert e2.resume() == [arn]
        assert e2.wait(arn, 20)
        e2.stop(5)
        return notified, e2.describe(arn, "alice"), e2.describe(arn, "public")
    finally:
        db2.close()


def test_a_restart_repeats_no_notification_whatever_happened_above(
        db_url: str, lattice: Lattice, fake: Any) -> None:
    seen = {}
    for bit in (0, 1):
        notified, high, low = _notifications_across_a_restart(db_url, lattice, fake, bit)
        assert notified == ["public"], (bit, notified)
        seen[bit] = high
        assert (low["status"], low["error"]) == ("RUNNING", None)
    # Above, each ends as it would have without the restart.
    assert (seen[0]["status"], seen[0]["error"]) == ("FAILED", "States.Timeout")
    assert (seen[1]["status"], seen[1]["error"], seen[1]["cause"]) == (
        "FAILED", "RuntimeError", "boom")
    assert seen[0]["label"] == seen[1]["label"] == "alice"


# ---------------------------------------------------------------------------------- F3
ONE_STEP = {"StartAt": "T", "States": {"T": task("step")}}


def test_a_refused_step_is_asked_again_not_failed(db: Any, lattice: Lattice) -> None:
    calls: list[str] = []

    def invoke(function: str, event: Any, label: str) -> Result:
        calls.append(label)
        if len(calls) <= 2:
            return Result("refused", error="busy: the overall queue is full")
        return Result("ok", {"done": True}, label=label)

    eng = make(db, lattice, invoke, {"step"}, docs={"wf": ONE_STEP})
    arn = eng.start("wf", "x", {}, "public")["executionArn"]
    assert eng.wait(arn, 20)
    d = eng.describe(arn, "public")
    assert (d["status"], d["output"]) == ("SUCCEEDED", {"done": True}), d
    assert len(calls) == 3
    assert not [e for e in d["history"] if e["type"] in ("TaskRetryScheduled", "StateFailed")]


def test_a_step_refused_at_shutdown_is_resumed_later(db_url: str, lattice: Lattice) -> None:
    refused = threading.Event()

    def shutting_down(function: str, event: Any, label: str) -> Result:
        refused.set()
        return Result("refused", error="the runtime is shutting down")

    db1 = EngineDB.open(db_url)
    e1 = make(db1, lattice, shutting_down, {"step"}, docs={"wf": ONE_STEP})
    arn = e1.start("wf", "x", {}, "public")["executionArn"]
    assert refused.wait(10)
    e1.stop(5)
    assert e1.describe(arn, "public")["status"] == "RUNNING"
    db1.close()
    db2 = EngineDB.open(db_url)
    try:
        e2 = make(db2, lattice, lambda f, e, lab: Result("ok", 7, label=lab), {"step"},
                  docs={"wf": ONE_STEP})
        assert e2.resume() == [arn]
        assert e2.wait(arn, 20)
        d = e2.describe(arn, "public")
        assert (d["status"], d["output"]) == ("SUCCEEDED", 7), d
    finally:
        db2.close()


APP_SHUTDOWN = """\
[app]
name = "review-shutdown"

[labels]
bottom = ["public"]
public = ["alice"]
alice = ["top"]
{limits}
[functions.slow]
handler = "functions/f.py:slow"
timeout = 10

[functions.step]
handler = "functions/f.py:step"
timeout = 5

[functions.consumer]
handler = "functions/f.py:consumer"
timeout = 5

[functions.spam]
handler = "functions/f.py:spam"
timeout = 20

[streams.events]
consumers = ["consumer"]
max_attempts = 2

[workflows.wf]
definition = "workflows/wf.json"

[workflows.sleepy]
definition = "workflows/sleepy.json"
"""

FUNCTIONS_SHUTDOWN = """\
import time

from trapeze.guest import kv, streams, workflows
from trapeze.guest.errors import LimitExceeded


def slow(event, context):
    time.sleep(1.5)
    # Put while the runtime drains: delivered after the restart.
    streams.put("events", {"during": "drain"}, partition_key="k")
    time.sleep(1.5)


def step(event, context):
    return {"ok": True}


def consumer(event, context):
    for r in event["Records"]:
        kv.put("got", r["data"]["during"], True)


def spam(event, context):
    started = 0
    try:
        for _ in range(event["n"]):
            workflows.start("sleepy", input={})
            started += 1
    except LimitExceeded as e:
        return {"started": started, "refused": type(e).__name__, "message": str(e)}
    return {"started": started}
"""


def _app(tmp_path: Path, limits: str = "") -> App:
    app_dir = tmp_path / "app"
    (app_dir / "functions").mkdir(parents=True)
    (app_dir / "workflows").mkdir()
    (app_dir / "trapeze.toml").write_text(APP_SHUTDOWN.replace("{limits}", limits))
    (app_dir / "functions" / "f.py").write_text(FUNCTIONS_SHUTDOWN)
    (app_dir / "workflows" / "wf.json").write_text(
        '{"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 1, "Next": "T"},'
        ' "T": {"Type": "Task", "Resource": "step", "End": true}}}')
    (app_dir / "workflows" / "sleepy.json").write_text(
        '{"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 86400, "End": true}}}')
    for p in (app_dir, app_dir / "functions", app_dir / "workflows"):
        p.chmod(0o755)
    return App.load(app_dir)


def test_a_normal_shutdown_fails_nothing(tmp_path: Path) -> None:
    """F3 through the real platform: Runtime.close while an invocation drains."""
    app = _app(tmp_path)
    url = f"sqlite:///{tmp_path / 'app.db'}"
    rt = app.start(store=url, http=False)
    busy = threading.Thread(target=lambda: rt.invoke("slow", {}, as_label="public"))
    busy.start()  # in flight, so that the drain takes a few seconds
    deadline = time.monotonic() + 30  # admitted (a fixed 0.5 s before): close() drains it
    while not (rt.invoker is not None and rt.invoker.busy()):
        assert time.monotonic() < deadline, "the slow invocation was never admitted"
        time.sleep(0.01)
    assert rt.engines is not None
    rt.engines.workflows.start("wf", "job1", {}, "public")  # its Task comes due in 1 s
    rt.close()
    busy.join()
    after = workflow_describe(url, app.manifest, "job1", clearance="top")
    assert (after["status"], after["error"]) == ("RUNNING", None), after
    with app.start(store=url, http=False) as rt2:  # the restart resumes both
        assert rt2.engines is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and workflow_describe(
                url, app.manifest, "job1", clearance="top")["status"] == "RUNNING":
            time.sleep(0.1)
        assert rt2.engines.streams.wait_idle(20)
        got = rt2.view("public").get("got", "drain")
        dead = rt2.engines.streams.dead_letters("events", "top")
    done = workflow_describe(url, app.manifest, "job1", clearance="top")
    assert (done["status"], done["output"]) == ("SUCCEEDED", {"ok": True}), done
    assert got is True and dead == []


def test_a_guest_sees_the_execution_limit(tmp_path: Path) -> None:
    """F5 through the real platform: [limits] workflow_executions, counted per label."""
    app = _app(tmp_path, "\n[limits]\nworkflow_executions = 3\n")
    assert app.manifest.limits.workflow_executions == 3
    with app.start(store=f"sqlite:///{tmp_path / 'app.db'}", http=False) as rt:
        alice = rt.invoke("spam", {"n": 3}, as_label="alice")
        public = rt.invoke("spam", {"n": 5}, as_label="public")
        assert rt.engines is not None
        rt.engines.workflows.stop(1)
    assert alice.status == "ok" and alice.value == {"started": 3}, alice
    # alice's executions do not count at public: public starts its own 3, then is refused.
    assert public.status == "ok", public
    assert public.value["started"] == 3 and public.value["refused"] == "LimitExceeded"
    assert "workflow_executions" in public.value["message"]


# ---------------------------------------------------------------------------------- F5
SLEEPY = {"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 100000, "End": True}}}
QUICK = {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}}


def test_running_executions_are_capped_per_label(db: Any, lattice: Lattice) -> None:
    eng = make(db, lattice, lambda f, e, lab: Result("ok", label=lab), set(),
               docs={"sleepy": SLEEPY, "quick": QUICK}, max_running=2)
    for i in range(2):
        eng.start("sleepy", f"a{i}", {}, "alice")
    # alice's running executions change nothing at public.
    for i in range(2):
        eng.start("sleepy", f"p{i}", {}, "public")
    with pytest.raises(LimitExceeded, match="workflow_executions"):
        eng.start("sleepy", "p2", {}, "public")
    with pytest.raises(LimitExceeded):
        eng.start("sleepy", "a2", {}, "alice")
    # A public caller naming a higher label is counted at its own label (the refusal
    # reaches it): alice's count does not decide, public's does.
    with pytest.raises(LimitExceeded):
        eng.start("sleepy", "p3", {}, "alice", caller_label="public")
    eng.start("sleepy", "b0", {}, "bob", caller_label="bob")
    assert [eng.running_at(lab) for lab in ("public", "alice", "bob")] == [2, 2, 1]
    # A refused start leaves nothing behind, and a slot frees when its execution ends.
    assert [x["name"] for x in eng.list("public")] == ["p0", "p1"]
    eng.stop(5)
    assert eng.running_at("public") == 0


def test_a_slot_is_free_again_when_the_execution_ends(db: Any, lattice: Lattice) -> None:
    eng = make(db, lattice, lambda f, e, lab: Result("ok", label=lab), set(),
               docs={"quick": QUICK}, max_running=1)
    for i in range(5):
        assert eng.wait(eng.start("quick", f"q{i}", {}, "public")["executionArn"], 10)
    assert eng.running_at("public") == 0
    assert [x["status"] for x in eng.list("public")] == ["SUCCEEDED"] * 5


# ------------------------------------------------------------------------------ NUL
CALLBACK = {"StartAt": "Ask", "States": {
    "Ask": {"Type": "Task", "Resource": "activity:approve", "End": True}}}


def test_nul_in_guest_texts_is_stored_or_refused_alike(db: Any, lattice: Lattice,
                                                       fake: Any) -> None:
    def bad(event: Any, ctx: Any) -> Any:
        raise ValueError("bad\x00byte")

    eng = make(db, lattice, fake({"bad": bad}), {"bad"},
               docs={"fails": {"StartAt": "T", "States": {"T": task("bad")}},
                     "ask": CALLBACK})
    arn = eng.start("fails", "f", {}, "public")["executionArn"]
    assert eng.wait(arn, 10)
    d = eng.describe(arn, "public")
    assert (d["status"], d["error"], d["cause"]) == ("FAILED", "ValueError", "bad\ufffdbyte")

    arn = eng.start("ask", "a", {}, "public")["executionArn"]
    t = eng.get_activity_task("approve", "public", wait_s=10)
    assert t is not None
    with pytest.raises(NotFound):
        eng.complete_task(t["taskToken"] + "\x00", {}, caller_label="public")
    eng.complete_task(t["taskToken"], error={"Error": "Nope", "Cause": "x\x00y"},
                      caller_label="public")
    assert eng.wait(arn, 10)
    d = eng.describe(arn, "public")
    assert (d["status"], d["error"], d["cause"]) == ("FAILED", "Nope", "x\ufffdy")

    with pytest.raises(InvalidArgument):
        eng.get_activity_task("appr\x00ve", "public")
    with pytest.raises(NotFound):
        eng.describe("a\x00", "public")
    assert eng.list("public", workflow="ask\x00") == []
