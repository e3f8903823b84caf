"""Durable workflow executions with labels carried step by step (trusted; DESIGN §4, §9).

Labels. An execution starts at its starter's label (or a higher one the starter named). Each
Task runs at the execution's current label; the label the invocation *ended* at becomes the
label of its output and of every later step, so a step that raises its label raises the
execution's. Pass, Choice and Wait compute nothing from outside and keep the label. Parallel
branches each start at the Parallel's label; the Parallel's result is at the join of the
branch labels, and when there is no join the Parallel fails at ``top``.

Visibility (TSNI). Whether a viewer at ``v`` sees an execution at all depends only on its
*start* label: the starter knew it started it. Every history event is stored with the label
it happened at, and a viewer sees only the events whose label flows to ``v``; the status,
output and error fields are shown only when the execution's current label flows to ``v``,
and otherwise read ``RUNNING``. So a low viewer's listing is the same whether the
execution's higher part succeeded, failed or hung. Execution names are unique per workflow
among the executions the starter can see (start label ⊑ the starter's label): answering
``ExecutionAlreadyExists`` because of a higher execution would tell the starter it exists.

Parallel waits for all branches even when one fails (Step Functions cancels the others): a
branch's failure is at its own label, and stopping a sibling at a lower label would let the
sibling's label learn it.

Durability. The state of every frame (the root, and one per Parallel branch) is written after
every transition, together with its history events, in one transaction. ``resume()`` restarts
unfinished executions from their last recorded state: a step whose completion was recorded is
never re-run; the step in flight at a crash runs again (at-least-once). Waits and retry
back-offs resume with the time that was left.

Several engines on one database. An execution is run by the one engine that holds its claim
(``EngineDB.claim``): the starter's engine claims it before inserting it, ``resume()`` claims
only executions nobody holds, and every write of its frames, history and status is fenced by
the claim (an engine that lost it gets ``ClaimLost`` and drops the execution). Where other
engines may share the database (PostgreSQL), ``resume()`` also keeps adopting, every
``adopt_interval`` seconds, the executions whose engine died, stopped or lost its connection.

Limits. Each running execution holds a thread of this engine: at most ``max_running``
(``[limits] workflow_executions``) run at once per label, counted at the label a start's
answer goes to (the starter's current label), so that a refused start (``LimitExceeded``)
depends only on executions started from that label. Executions resumed or adopted count at
their start label and are never refused. A refused *invocation* (the runtime shutting down,
its queues full) never ran: the step asks again after a pause, counting no retry, or is
left for ``resume()`` when the engine stops.

Callback tasks and the completion rule. A task token is bound to the execution's label ``e``
when the task starts. ``complete_task`` at the caller's label ``c`` is allowed iff ``c == e``:

* ``e ⊑ c`` because the reply (accepted, unknown token, no longer pending) depends on the
  execution's state at ``e``;
* ``c ⊑ e`` because the output enters the execution at ``e``: were ``c`` higher, the
  execution would have to rise to ``c``, and then whether the task times out (an event at
  ``e``) would depend on what happened at ``c``.

A caller below ``e`` can raise its label to ``e`` first (``label.raise_to``), as the Hello
Retail ``receive`` function does; a caller above ``e`` can be started at ``e``. A token whose
label does not flow to ``c`` is reported exactly like an unknown one. Activity workers likewise
get only tasks at exactly their label (a claim at a higher label would hide the task from the
lower workers, telling them something about the higher one).
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from trapeze.errors import AlreadyExists, FlowError, InvalidArgument, LimitExceeded, NotFound
from trapeze.labels import Lattice, NoJoinError
from trapeze.policy.specs import WorkflowSpec
from trapeze.runtime import asl
from trapeze.runtime.asl import Machine, PathError, State
from trapeze.runtime.engine_store import EngineDB, dumps, exec_claim, loads
from trapeze.runtime.streams import Invoke, StepResult

log = logging.getLogger("trapeze.workflows")

_NAME_RE = re.compile(r"^[A-Za-z0-9_.:+=@-]{1,80}$")
_ERROR_NAME = re.compile(r"^([A-Za-z_][\w.]*)(?::\s*(.*))?$", re.S)
TOKEN_POLL_S = 0.5
# Running executions per label (the [limits] workflow_executions default): each holds a thread.
DEFAULT_MAX_RUNNING = 1000
# A refused invocation (the runtime is shutting down, or its queues are full) never ran: the
# step waits this long (doubling up to the max) and asks again, counting no attempt.
REFUSED_RETRY_S = 0.2
REFUSED_RETRY_MAX_S = 5.0


class ExecutionAlreadyExists(AlreadyExists):
    """An execution of that name is visible to the starter (Step Functions' error)."""


class _Stopped(Exception):
    """The engine is stopping: leave the execution where it was last recorded."""


@dataclass
class _Outcome:
    ok: bool
    output: Any
    label: str
    error: str | None = None
    cause: str | None = None


@dataclass
class _Next:
    state: str | None  # None: the frame ends successfully
    output: Any
    label: str


@dataclass
class _Failed:
    error: str
    cause: str | None
    label: str
    catchable: bool = True


@dataclass
class _Exec:
    id: str
    workflow: str
    name: str
    input: Any
    started: float
    machine: Machine
    threads: list[threading.Thread] = field(default_factory=list)
    slot: str | None = None  # the label whose count of running executions this one is in


class WorkflowEngine:
    def __init__(
        self,
        db: EngineDB,
        lattice: Lattice,
        workflows: Mapping[str, WorkflowSpec],
        invoke: Invoke,
        *,
        functions: Collection[str] | None = None,
        time_scale: float = 1.0,
        adopt_interval: float | None = None,
        max_running: int = DEFAULT_MAX_RUNNING,
    ) -> None:
        self.db = db
        # Running executions per label: see `start` (which label counts) and the module doc.
        self.max_running = max_running
        self._slots: dict[str, int] = {}
        # None: the backend's default (no periodic adoption where one engine owns the file).
        self.adopt_interval = db.adopt_interval if adopt_interval is None else adopt_interval
        self.lattice = lattice
        self.specs = dict(workflows)
        self.invoke = invoke
        # Tests shrink Wait and Retry intervals; TimeoutSeconds is scaled the same way.
        self.time_scale = time_scale
        self.machines = {name: asl.parse(spec.document, name, functions)
                         for name, spec in self.specs.items()}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._tokens = threading.Condition()
        self._running: dict[str, threading.Thread] = {}
        self._orphans: set[str] = set()  # running executions of workflows no longer declared
        self._adopter: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def resume(self) -> list[str]:
        """Continue every unfinished execution no engine runs (call once when the runtime
        starts); where other engines may share the database, keep adopting those whose
        engine went away, every `adopt_interval` seconds, until :meth:`stop`."""
        self._stop.clear()
        out = self._adopt()
        if self.adopt_interval and (self._adopter is None or not self._adopter.is_alive()):
            self._adopter = threading.Thread(target=self._adopt_loop, daemon=True,
                                             name="trapeze-wf-adopt")
            self._adopter.start()
        return out

    def _adopt(self) -> list[str]:
        with self._lock:
            local = set(self._running) | self._orphans
        out = []
        for row in self.db.claim_running_executions(local):
            machine = self.machines.get(row["workflow"])
            if machine is None:
                log.warning("execution %s: workflow %r is no longer declared; left as is",
                            row["id"], row["workflow"])
                with self._lock:
                    self._orphans.add(row["id"])
                self.db.release(exec_claim(row["id"]))
                continue
            ex = _Exec(row["id"], row["workflow"], row["name"], loads(row["input"]),
                       row["created"], machine)
            # It exists already: counted (under its start label), never refused.
            self._take_slot(row["start_label"], check=False)
            ex.slot = row["start_label"]
            if self._launch(ex):
                out.append(ex.id)
            else:
                self._free_slot(ex.slot)
        return out

    def _take_slot(self, label: str, *, check: bool = True) -> None:
        """Count one more running execution at `label`; LimitExceeded when `check` and the
        label has `max_running` already (a count of executions started from `label` only)."""
        with self._lock:
            n = self._slots.get(label, 0)
            if check and n >= self.max_running:
                raise LimitExceeded(
                    f"LimitExceeded: {n} workflow executions started from label {label!r}"
                    f" are still running, the most this app allows per label ([limits]"
                    f" workflow_executions = {self.max_running}); start more once some end"
                )
            self._slots[label] = n + 1

    def _free_slot(self, label: str | None) -> None:
        if label is None:
            return
        with self._lock:
            n = self._slots.get(label, 0) - 1
            if n > 0:
                self._slots[label] = n
            else:
                self._slots.pop(label, None)

    def running_at(self, label: str) -> int:
        """How many executions counted at `label` this engine runs now (tests, operators)."""
        with self._lock:
            return self._slots.get(label, 0)

    def _adopt_loop(self) -> None:
        assert self.adopt_interval
        while not self._stop.wait(self.adopt_interval):
            try:
                self._adopt()
            except Exception:  # the database may be unreachable for a while: try again
                log.exception("adopting unfinished executions failed; retrying")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop running executions where they were last recorded (resume() continues them)."""
        self._stop.set()
        with self._tokens:
            self._tokens.notify_all()
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._running.values())
        if self._adopter is not None:
            threads.append(self._adopter)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def wait(self, execution_id: str, timeout: float = 30.0) -> bool:
        """Wait for this engine's thread of an execution to end (tests and benchmarks)."""
        with self._lock:
            t = self._running.get(execution_id)
        if t is not None:
            t.join(timeout)
            return not t.is_alive()
        return True

    def _launch(self, ex: _Exec) -> bool:
        """Run an execution whose claim this engine holds (released when the run ends)."""
        with self._lock:
            if ex.id in self._running:
                return False
            t = threading.Thread(target=self._run, args=(ex,), daemon=True,
                                 name=f"trapeze-wf-{ex.name}"[:60])
            self._running[ex.id] = t
        t.start()
        return True

    # ------------------------------------------------------------------ start
    def start(self, workflow: str, name: str | None, input: Any, label: str, *,
              starter: str | None = None, caller_label: str | None = None) -> dict[str, Any]:
        """Start an execution at `label` (already checked: the caller's label or above).

        `starter` is the starting function, checked against the workflow's start_from.
        `caller_label` is the label the answer goes back to (the starter's current label;
        default `label`): only executions visible there can clash with the name.
        """
        machine = self.machines.get(workflow)
        if machine is None:
            known = ", ".join(sorted(self.machines)) or "none declared"
            raise NotFound(f"no workflow named {workflow!r} (workflows: {known})")
        spec = self.specs[workflow]
        if starter is not None and spec.start_from and starter not in spec.start_from:
            raise FlowError(f"function {starter!r} may not start workflow {workflow!r}"
                            f" (start_from: {', '.join(spec.start_from)})")
        label = self.lattice.check(label)
        if name is None:
            name = uuid.uuid4().hex
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise InvalidArgument("an execution name is 1-80 characters of letters, digits"
                                  " and _.:+=@-")
        try:
            text = dumps(input)
        except (TypeError, ValueError) as e:
            raise InvalidArgument(f"a workflow input must be a JSON value: {e}") from None
        exec_id = f"{workflow}:{name}:{uuid.uuid4().hex[:12]}"
        # The clash is decided at the label the answer reaches, not at `label`: a starter at c
        # that names a higher label would otherwise learn, from ExecutionAlreadyExists, of an
        # execution started between c and `label`.
        viewer = label if caller_label is None else self.lattice.check(caller_label)
        # Each running execution holds a thread: at most `max_running` per label, counted
        # at the label the answer goes to (`viewer`, the start label unless the caller named
        # a higher one). So the refusal depends only on executions started from that label,
        # never on what higher labels started.
        self._take_slot(viewer)
        slot: str | None = viewer
        try:
            # Claimed before it exists, so that no other engine's adoption runs it first. (A
            # stopped engine claims nothing: another engine, or resume(), will run it.)
            claimed = not self._stop.is_set() and self.db.claim(exec_claim(exec_id))
            try:
                created = self.db.create_execution(
                    exec_id, workflow, name, label, text,
                    lambda other: self.lattice.flows(other, viewer), machine.start_at,
                )
            except BaseException:
                if claimed:
                    self.db.release(exec_claim(exec_id))
                raise
            if not created:
                if claimed:
                    self.db.release(exec_claim(exec_id))
                raise ExecutionAlreadyExists(
                    f"ExecutionAlreadyExists: workflow {workflow!r} already has an execution"
                    f" named {name!r}"
                )
            if claimed:
                if self._launch(_Exec(exec_id, workflow, name, input, time.time(), machine,
                                      slot=viewer)):
                    slot = None  # the run frees it when it ends
                else:
                    self.db.release(exec_claim(exec_id))
        finally:
            self._free_slot(slot)
        return {"executionArn": exec_id, "name": name, "startDate": time.time()}

    # ------------------------------------------------------------------ running
    def _run(self, ex: _Exec) -> None:
        try:
            out = self._run_frame(ex, ex.machine, "")
            if out.ok:
                self.db.finish_execution(ex.id, "SUCCEEDED", out.label, dumps(out.output),
                                         None, None)
            else:
                self.db.finish_execution(ex.id, "FAILED", out.label, None, out.error,
                                         out.cause)
        except _Stopped:
            pass
        except Exception as e:
            if self._stop.is_set():
                return  # shutting down (the tables may be closed): resume() continues it
            if self.db.is_transient(e):
                # The claim was lost, or the database is unreachable: the execution stays
                # as last recorded, for whichever engine claims it next (at-least-once).
                log.warning("execution %s left for resume: %s", ex.id, e)
                return
            # Where in the lattice the failure happened is unknown here: record it at top.
            log.exception("execution %s failed inside the engine", ex.id)
            try:
                self.db.finish_execution(ex.id, "FAILED", self.lattice.top, None,
                                         "Trapeze.Internal", type(e).__name__)
            except Exception:
                log.exception("execution %s: could not record the failure", ex.id)
        finally:
            try:
                self.db.release(exec_claim(ex.id))
            except Exception:
                log.exception("execution %s: could not release its claim", ex.id)
            with self._lock:
                self._running.pop(ex.id, None)
            self._free_slot(ex.slot)

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise _Stopped

    def _sleep_until(self, when: float | None) -> None:
        if when is None:
            return
        while True:
            left = when - time.time()
            if left <= 0:
                return
            if self._stop.wait(min(left, 1.0)):
                raise _Stopped

    def _context(self, ex: _Exec, st: State, retries: dict[str, int],
                 token: str | None) -> dict[str, Any]:
        return {
            "Execution": {"Id": ex.id, "Name": ex.name, "Input": ex.input,
                          "StartTime": ex.started},
            "StateMachine": {"Name": ex.workflow},
            "State": {"Name": st.name, "RetryCount": _attempts(retries)},
            "Task": {"Token": token},
        }

    def _run_frame(self, ex: _Exec, machine: Machine, frame_id: str) -> _Outcome:
        f = self.db.frame(ex.id, frame_id)
        if f is None:
            raise RuntimeError(f"execution {ex.id}: frame {frame_id!r} is missing")
        if f["status"] == "succeeded":
            return _Outcome(True, loads(f["output"]), f["label"])
        if f["status"] == "failed":
            return _Outcome(False, None, f["label"], f["error"], f["cause"])
        name, step, label = f["state"], f["step"], f["label"]
        data = loads(f["input"])
        retries: dict[str, int] = dict(f["retries"] or {})
        wait_until, token = f["wait_until"], f["token"]
        root = frame_id == ""

        def save(**kw: Any) -> None:
            self.db.save_frame(ex.id, frame_id, root=root, **kw)

        while True:
            self._check_stop()
            st = machine.states[name]
            try:
                res = self._step(ex, frame_id, st, step, data, label, retries, wait_until,
                                 token)
            except PathError as e:
                res = _Failed("States.Runtime", f"state {st.name!r}: {e}", label, False)
            if isinstance(res, _Failed):
                label = res.label
                retry_at = self._retry(st, res, retries) if res.catchable else None
                if retry_at is not None:
                    wait_until, token = retry_at, None
                    retries.pop("_notified", None)  # a new attempt notifies again
                    retries.pop("_notify_failed", None)
                    save(state=name, step=step, input_text=dumps(data), label=label,
                         status="running", retries=retries, wait_until=wait_until,
                         events=[("TaskRetryScheduled", name,
                                  {"error": res.error, "cause": res.cause,
                                   "attempt": _attempts(retries)})])
                    continue
                catcher = next((c for c in st.catch if asl.error_matches(c.errors, res.error)),
                               None) if res.catchable else None
                if catcher is None:
                    save(state=name, step=step, input_text=dumps(data), label=label,
                         status="failed", retries=retries, error=res.error, cause=res.cause,
                         events=[("StateFailed", name, {"error": res.error,
                                                        "cause": res.cause})])
                    return _Outcome(False, None, label, res.error, res.cause)
                try:
                    out = asl.apply_output(st, data, {"Error": res.error,
                                                      "Cause": res.cause or ""},
                                           self._context(ex, st, retries, token),
                                           result_path=catcher.result_path)
                except PathError as e:
                    err = f"state {st.name!r}: {e}"
                    save(state=name, step=step, input_text=dumps(data), label=label,
                         status="failed", retries=retries, error="States.Runtime", cause=err,
                         events=[("StateFailed", name, {"error": "States.Runtime",
                                                        "cause": err})])
                    return _Outcome(False, None, label, "States.Runtime", err)
                caught = [("StateCaught", name, {"error": res.error, "next": catcher.next})]
                res = _Next(catcher.next, out, label)
            else:
                caught = []
            label = res.label
            out_text = dumps(res.output)
            if res.state is None:
                save(state=name, step=step + 1, input_text=dumps(data), label=label,
                     status="succeeded", retries={}, output_text=out_text,
                     events=caught + [("StateExited", name, {"output": res.output})])
                return _Outcome(True, res.output, label)
            save(state=res.state, step=step + 1, input_text=out_text, label=label,
                 status="running", retries={},
                 events=caught + [("StateExited", name, {"output": res.output}),
                                  ("StateEntered", res.state, {"input": res.output})])
            name, step, data = res.state, step + 1, res.output
            retries, wait_until, token = {}, None, None

    def _retry(self, st: State, res: _Failed, retries: dict[str, int]) -> float | None:
        """The time of the next attempt, counting it in `retries`; None: no retry left."""
        for i, r in enumerate(st.retry):
            if asl.error_matches(r.errors, res.error):
                n = retries.get(str(i), 0)
                if n >= r.max_attempts:
                    return None
                retries[str(i)] = n + 1
                return time.time() + r.interval * r.backoff ** n * self.time_scale
        return None

    def _step(self, ex: _Exec, frame_id: str, st: State, step: int, data: Any, label: str,
              retries: dict[str, int], wait_until: float | None,
              token: str | None) -> _Next | _Failed:
        ctx = self._context(ex, st, retries, token)
        nxt = None if st.end else st.next
        if st.type == "Pass":
            eff = asl.apply_input(st, data, ctx)
            result = st.raw["Result"] if "Result" in st.raw else eff
            return _Next(nxt, asl.apply_output(st, data, result, ctx), label)
        if st.type == "Choice":
            eff = asl.apply_input(st, data, ctx)
            target = asl.choose(st, eff, ctx)
            if target is None:
                return _Failed("States.NoChoiceMatched",
                               f"state {st.name!r}: no choice rule matched", label, False)
            op = st.get("OutputPath", "$")
            return _Next(target, {} if op is None else asl.get_path(eff, op, ctx), label)
        if st.type == "Succeed":
            eff = asl.apply_input(st, data, ctx)
            op = st.get("OutputPath", "$")
            return _Next(None, {} if op is None else asl.get_path(eff, op, ctx), label)
        if st.type == "Fail":
            return _Failed(st.get("Error", "States.Fail"), st.get("Cause"), label, False)
        if st.type == "Wait":
            if wait_until is None:
                wait_until = time.time() + self._wait_seconds(st, data, ctx) * self.time_scale
                self.db.save_frame(ex.id, frame_id, state=st.name, step=step,
                                   input_text=dumps(data), label=label, status="running",
                                   retries=retries, wait_until=wait_until, root=frame_id == "",
                                   events=[("WaitStarted", st.name, {"until": wait_until})])
            self._sleep_until(wait_until)
            op = st.get("OutputPath", "$")
            eff = asl.apply_input(st, data, ctx)
            return _Next(nxt, {} if op is None else asl.get_path(eff, op, ctx), label)
        if st.type == "Task":
            self._sleep_until(wait_until)  # a retry back-off, possibly resumed after a crash
            assert st.target is not None
            if st.target.kind == "function":
                return self._task(st, nxt, data, label, ctx)
            return self._callback(ex, frame_id, st, nxt, step, data, label, retries, token)
        if st.type == "Parallel":
            self._sleep_until(wait_until)
            return self._parallel(ex, frame_id, st, nxt, step, data, label, retries, ctx)
        raise AssertionError(st.type)

    def _wait_seconds(self, st: State, data: Any, ctx: Any) -> float:
        if "Seconds" in st.raw:
            return float(st.raw["Seconds"])
        if "SecondsPath" in st.raw:
            v = asl.get_path(data, st.raw["SecondsPath"], ctx)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise PathError(f"SecondsPath {st.raw['SecondsPath']!r} is not a number >= 0")
            return float(v)
        from datetime import datetime

        raw = st.raw.get("Timestamp")
        if raw is None:
            raw = asl.get_path(data, st.raw["TimestampPath"], ctx)
        try:
            when = datetime.fromisoformat(str(raw).replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise PathError(f"{raw!r} is not an ISO 8601 timestamp") from None
        return max(0.0, when - time.time())

    def _final(self, label: str, ended: str | None) -> str:
        if ended is None:
            return label
        try:
            return self.lattice.join(label, ended)
        except NoJoinError:
            return self.lattice.top

    def _invoke(self, function: str, event: Any, label: str) -> tuple[StepResult, float]:
        """Invoke `function` at `label`: its result (never "refused") and how long the
        invocation that answered took.

        A refused invocation never ran (the runtime is shutting down, or its queues are
        full): that is no failure of the step. It is asked again after a pause, counting no
        retry; when the engine stops meanwhile, the execution stays as last recorded and
        resume() continues it.
        """
        delay = REFUSED_RETRY_S
        while True:
            t0 = time.monotonic()
            r = self.invoke(function, event, label)
            elapsed = time.monotonic() - t0
            if r.status != "refused":
                return r, elapsed
            log.info("invocation of %s refused (%s); asked again in %.1fs", function,
                     r.error, delay)
            if self._stop.wait(delay):
                raise _Stopped
            delay = min(delay * 2, REFUSED_RETRY_MAX_S)

    @staticmethod
    def _output(st: State, nxt: str | None, data: Any, result: Any, ctx: Any,
                label: str) -> _Next | _Failed:
        """The state's output from `result`, data at `label` (a task's, a join's or a
        completion's, above the label the step started at). A path that matches nothing in
        it fails the step at that label: caught in _run_frame, the failure was recorded at the
        start label, and a task that raised could leave out a field to show an observer there
        FAILED instead of RUNNING (review, session 7: tests/attacks/test_review_error_paths.py).
        """
        try:
            return _Next(nxt, asl.apply_output(st, data, result, ctx), label)
        except PathError as e:
            return _Failed("States.Runtime", f"state {st.name!r}: {e}", label, False)

    def _task(self, st: State, nxt: str | None, data: Any, label: str,
              ctx: Any) -> _Next | _Failed:
        assert st.target is not None
        eff = asl.apply_input(st, data, ctx)
        r, elapsed = self._invoke(st.target.name, eff, label)
        # A result arriving after stop() is dropped, as if the process had died: the step
        # runs again on resume (at-least-once).
        self._check_stop()
        if r.status == "withheld":
            # Only when wired without bound = top: the label is unknown, so assume the worst.
            return _Failed("Trapeze.Withheld", "the step's reply was withheld",
                           self.lattice.top)
        final = self._final(label, r.label)
        timeout = st.timeout * self.time_scale if st.timeout else None
        if r.status == "ok" and (timeout is None or elapsed <= timeout):
            return self._output(st, nxt, data, r.value, ctx, final)
        if r.status in ("ok", "timeout"):
            # Judged on the returned result, at the label it ended at: cutting it short at
            # the current label would make the timeout depend on whatever ran above it.
            return _Failed("States.Timeout", f"{st.target.name} ran longer than allowed",
                           final)
        name, cause = _error_name(r.error)
        return _Failed(name, cause, final)

    def _callback(self, ex: _Exec, frame_id: str, st: State, nxt: str | None, step: int,
                  data: Any, label: str, retries: dict[str, int],
                  token: str | None) -> _Next | _Failed:
        assert st.target is not None
        root = frame_id == ""
        timeout = st.timeout * self.time_scale if st.timeout else None
        if token is None:
            token = secrets.token_urlsafe(24)
            ctx = self._context(ex, st, retries, token)
            eff = asl.apply_input(st, data, ctx)
            deadline = time.time() + timeout if timeout else None
            activity = st.target.name if st.target.kind == "activity" else None
            self.db.new_token(token, ex.id, frame_id, label, activity, dumps(eff))
            self.db.save_frame(ex.id, frame_id, state=st.name, step=step,
                               input_text=dumps(data), label=label, status="running",
                               retries=retries, wait_until=deadline, token=token, root=root,
                               events=[("TaskScheduled", st.name,
                                        {"resource": st.get("Resource")})])
        else:
            f = self.db.frame(ex.id, frame_id)
            deadline = f["wait_until"] if f else None
            if f is not None and retries.get("_notified") and retries.get("_notify_failed"):
                # Resumed while waiting out a notification that failed above the token's
                # label (below): wait exactly as then, and fail with what was recorded.
                self._await_token(token, deadline)
                retries.pop("_notified", None)
                retries.pop("_notify_failed", None)
                return _Failed(f["error"] or "States.TaskFailed", f["cause"], label)
        token_label = self.db.token(token)["label"]  # type: ignore[index]
        if st.target.kind == "callback" and not retries.get("_notified"):
            ctx = self._context(ex, st, retries, token)
            eff = asl.apply_input(st, data, ctx)
            if "Parameters" not in st.raw and isinstance(eff, dict):
                eff = {**eff, "TaskToken": token}
            elif isinstance(eff, dict) and "Payload" in eff and "FunctionName" in eff:
                eff = eff["Payload"]  # the lambda:invoke.waitForTaskToken form
            r, _ = self._invoke(st.target.name, eff, label)
            self._check_stop()
            final = self._final(label, r.label)
            if r.status != "ok":
                name, cause = _error_name(r.error) if r.status == "error" else \
                    ("States.TaskFailed", r.error)
                if self.lattice.flows(final, token_label):
                    self.db.settle_token(token, "failed", None, "States.TaskFailed", r.error)
                elif deadline is not None:
                    # The notification failed above the token's label. Settling the token now
                    # would tell a completer at the token's label ("no longer pending" instead
                    # of accepted) that it failed. The token lives on exactly as after a
                    # successful notification: pending until completed or timed out. And it
                    # is recorded as notified, as after a success (same frame, same label;
                    # the failure kept at the raised label), so that a restart meanwhile
                    # notifies no more often in one case than in the other.
                    retries["_notified"] = 1
                    retries["_notify_failed"] = 1
                    self.db.save_frame(ex.id, frame_id, state=st.name, step=step,
                                       input_text=dumps(data), label=final, status="running",
                                       retries=retries, wait_until=deadline, token=token,
                                       error=name, cause=cause, root=root)
                    self._await_token(token, deadline)
                    retries.pop("_notified", None)
                    retries.pop("_notify_failed", None)
                # (Without a deadline the token simply stays pending, as it would then.)
                return _Failed(name, cause, final)
            label = final
            retries["_notified"] = 1
            self.db.save_frame(ex.id, frame_id, state=st.name, step=step,
                               input_text=dumps(data), label=label, status="running",
                               retries=retries, wait_until=deadline, token=token, root=root)
        t = self._await_token(token, deadline)
        retries.pop("_notified", None)
        # The completion happened at exactly the token's label (see the module doc), which
        # flows to the frame's label: the label stays.
        assert self.lattice.flows(token_label, label)
        ctx = self._context(ex, st, retries, token)
        if t["status"] == "succeeded":
            return self._output(st, nxt, data, loads(t["output"]), ctx, label)
        if t["status"] == "timedout":
            return _Failed("States.Timeout", f"task {st.name!r} was not completed in time",
                           label)
        return _Failed(t["error"] or "States.TaskFailed", t["cause"], label)

    def _await_token(self, token: str, deadline: float | None) -> dict[str, Any]:
        """Wait until the token is settled, timing it out at `deadline`; its row."""
        while True:
            self._check_stop()
            t = self.db.token(token)
            assert t is not None
            if t["status"] in ("succeeded", "failed", "timedout"):
                return t
            now = time.time()
            if deadline is not None and now >= deadline:
                self.db.settle_token(token, "timedout", None, "States.Timeout", None)
                continue
            with self._tokens:
                self._tokens.wait(min(TOKEN_POLL_S, (deadline - now) if deadline else
                                      TOKEN_POLL_S))

    def _parallel(self, ex: _Exec, frame_id: str, st: State, nxt: str | None, step: int,
                  data: Any, label: str, retries: dict[str, int], ctx: Any) -> _Next | _Failed:
        eff = asl.apply_input(st, data, ctx)
        attempt = _attempts(retries)
        ids = [f"{frame_id}/{step}.{attempt}.{i}" for i in range(len(st.branches))]
        for cid, branch in zip(ids, st.branches, strict=True):
            if self.db.frame(ex.id, cid) is None:
                self.db.save_frame(ex.id, cid, state=branch.start_at, step=0,
                                   input_text=dumps(eff), label=label, status="running",
                                   retries={},
                                   events=[("ParallelBranchStarted", st.name, {"input": eff}),
                                           ("StateEntered", branch.start_at, {"input": eff})])
        outcomes: list[_Outcome | None] = [None] * len(ids)
        stopped: list[bool] = []

        def run(i: int) -> None:
            try:
                outcomes[i] = self._run_frame(ex, st.branches[i], ids[i])
            except _Stopped:
                stopped.append(True)
            except Exception as e:
                if self.db.is_transient(e):
                    # As for the whole execution (see _run): left for resume.
                    log.warning("execution %s: branch %s left for resume: %s", ex.id, ids[i], e)
                    stopped.append(True)
                    return
                log.exception("execution %s: branch %s failed inside the engine", ex.id, ids[i])
                outcomes[i] = _Outcome(False, None, self.lattice.top, "Trapeze.Internal",
                                       type(e).__name__)

        threads = [threading.Thread(target=run, args=(i,), daemon=True)
                   for i in range(1, len(ids))]
        for t in threads:
            t.start()
        run(0)
        for t in threads:
            t.join()
        if stopped:
            raise _Stopped
        done = [o for o in outcomes if o is not None]
        try:
            joined = self.lattice.join_all([label, *(o.label for o in done)])
        except NoJoinError as e:
            return _Failed("Trapeze.NoJoin",
                           f"state {st.name!r}: the branches ended at labels without a join: {e}",
                           self.lattice.top)
        failed = [o for o in done if not o.ok]
        if failed:
            return _Failed(failed[0].error or "States.BranchFailed", failed[0].cause, joined)
        return self._output(st, nxt, data, [o.output for o in done], ctx, joined)

    # ------------------------------------------------------------------ callbacks
    def complete_task(self, token: str, output: Any = None, error: Any = None, *,
                      caller_label: str) -> dict[str, Any]:
        """Complete a callback/activity task (rule in the module doc: caller == token label)."""
        caller = self.lattice.check(caller_label)
        # (A NUL is in no token, and PostgreSQL refuses it in a query: answered as unknown.)
        t = self.db.token(token) if isinstance(token, str) and "\x00" not in token else None
        if t is None or not self.lattice.flows(t["label"], caller):
            raise NotFound("TaskDoesNotExist: no task with this token")
        if t["label"] != caller:
            raise FlowError(
                f"this task belongs to an execution at {t['label']!r}; complete it at exactly"
                f" that label (the caller is at {caller!r})"
            )
        if error is not None:
            if isinstance(error, Mapping):
                err, cause = str(error.get("Error") or error.get("error") or
                                 "States.TaskFailed"), error.get("Cause") or error.get("cause")
            else:
                err, cause = str(error), None
            ok = self.db.settle_token(token, "failed", None, err[:256],
                                      None if cause is None else str(cause)[:32768])
        else:
            try:
                text = dumps(output)
            except (TypeError, ValueError) as e:
                raise InvalidArgument(f"a task output must be a JSON value: {e}") from None
            ok = self.db.settle_token(token, "succeeded", text, None, None)
        if not ok:
            raise InvalidArgument("TaskTimedOut: the task is no longer pending")
        with self._tokens:
            self._tokens.notify_all()
        return {"completed": True}

    def get_activity_task(self, activity: str, label: str, *, wait_s: float = 0.0,
                          execution: str | None = None) -> dict[str, Any] | None:
        """Long-poll for a pending task of `activity` at exactly `label`: {taskToken, input}."""
        label = self.lattice.check(label)
        if not isinstance(activity, str) or "\x00" in activity or \
                (execution is not None and "\x00" in execution):
            raise InvalidArgument("an activity name (and an execution id) is a string"
                                  " without NUL")
        deadline = time.monotonic() + max(0.0, wait_s)
        while True:
            got = self.db.claim_activity_task(activity, label, execution)
            if got is not None:
                return {"taskToken": got[0], "input": loads(got[1])}
            left = deadline - time.monotonic()
            if left <= 0 or self._stop.is_set():
                return None
            time.sleep(min(0.05, left))

    # ------------------------------------------------------------------ viewing
    def list(self, label: str, workflow: str | None = None) -> list[dict[str, Any]]:
        """Executions the viewer at `label` may know of, with what it may see of each."""
        viewer = self.lattice.check(label)
        if workflow is not None and "\x00" in workflow:
            return []  # no name has one (and PostgreSQL refuses it in a query)
        return [self._view(row, viewer) for row in self.db.executions(workflow=workflow)
                if self.lattice.flows(row["start_label"], viewer)]

    def describe(self, execution: str, label: str) -> dict[str, Any]:
        """One execution (by id, or by name: the newest visible one) with visible history."""
        viewer = self.lattice.check(label)
        # Filter by visibility before falling back to the name, so that whether a hidden
        # execution has this id changes nothing a low viewer sees.
        def visible(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [r for r in rows if self.lattice.flows(r["start_label"], viewer)]

        rows = [] if not isinstance(execution, str) or "\x00" in execution else \
            visible(self.db.executions(exec_id=execution)) or visible(
                self.db.executions(name=execution))
        if not rows:
            raise NotFound(f"no execution {execution!r}")
        row = rows[-1]
        out = self._view(row, viewer)
        out["input"] = loads(row["input"])
        events = [e for e in self.db.history(row["id"])
                  if self.lattice.flows(e["label"], viewer)]
        # The stored ids are global (every execution, every label): numbered afresh among
        # the events this viewer sees, so that neither other executions' events nor this
        # one's hidden events show as gaps.
        for i, e in enumerate(events, 1):
            e["id"] = i
        out["history"] = events
        if not self.lattice.flows(row["label"], viewer) and events:
            out["label"] = events[-1]["label"]
        return out

    def _view(self, row: dict[str, Any], viewer: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "executionArn": row["id"], "workflow": row["workflow"], "name": row["name"],
            "startDate": row["created"], "startLabel": row["start_label"],
        }
        if self.lattice.flows(row["label"], viewer):
            out.update(status=row["status"], label=row["label"], output=loads(row["output"]),
                       error=row["error"], cause=row["cause"],
                       stopDate=row["updated"] if row["status"] != "RUNNING" else None)
        else:
            # All the viewer may know: it is not finished at any label it can see.
            out.update(status="RUNNING", label=row["start_label"], output=None, error=None,
                       cause=None, stopDate=None)
        return out


def _attempts(retries: dict[str, int]) -> int:
    """Retries so far (keys starting with "_" are the engine's own markers)."""
    return sum(v for k, v in retries.items() if not k.startswith("_"))


def _error_name(error: str | None) -> tuple[str, str | None]:
    """Step Functions names an error by the exception's class: "ValueError: boom"."""
    if not error:
        return "States.TaskFailed", None
    first = error.strip().splitlines()[-1] if "Traceback" in error else error.strip()
    m = _ERROR_NAME.match(first)
    if m and (m.group(2) is not None or "." in m.group(1) or m.group(1)[0].isupper()):
        return m.group(1), m.group(2)
    return "States.TaskFailed", error


# ====================================================================== wiring
class Engines:
    """Both engines over one store (its SQLite file or PostgreSQL database), with the
    runtime's Dispatcher calls (trusted).

    The runtime builds one at start (after its Invoker exists), calls :meth:`start`, routes
    the Dispatcher's ``stream_put``/``workflow_start``/``task_complete`` here, and at
    shutdown calls :meth:`stop` *before* draining its invoker (so that no engine step meets
    an invoker that refuses work) and :meth:`close` after it, before closing the store.
    `label` arguments are already checked by the monitor (the caller's current label, or a
    higher one it named).
    """

    def __init__(self, store_url: str, lattice: Lattice, manifest: Any, invoke: Invoke, *,
                 stream_workers: int = 4, time_scale: float = 1.0,
                 adopt_interval: float | None = None) -> None:
        from trapeze.runtime.streams import StreamEngine

        self.db = EngineDB.open(store_url)  # SQLite or PostgreSQL, by the URL
        limits = getattr(manifest, "limits", None)
        try:
            self.streams = StreamEngine(self.db, lattice, manifest.streams, invoke,
                                        workers=stream_workers)
            self.workflows = WorkflowEngine(
                self.db, lattice, manifest.workflows, invoke,
                functions=set(manifest.functions), time_scale=time_scale,
                adopt_interval=adopt_interval,
                max_running=getattr(limits, "workflow_executions", DEFAULT_MAX_RUNNING))
        except BaseException:
            self.db.close()
            raise

    def start(self) -> Engines:
        self.workflows.resume()
        self.streams.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop delivering and running (both resume at the next start); the tables stay
        open, so that invocations still draining may put records and start executions."""
        self.streams.stop(timeout)
        self.workflows.stop(timeout)

    def close(self, timeout: float = 10.0) -> None:
        self.stop(timeout)
        self.db.close()

    # --- Dispatcher methods (parent: trapeze.monitor.Invocation)
    def stream_put(self, parent: Any, stream: str, record: Any, partition_key: str | None,
                   label: str) -> Any:
        # The reply goes back to the caller's current label: no count of a higher label's
        # records in it (see StreamEngine.put).
        return self.streams.put(stream, record, partition_key, label,
                                caller_label=getattr(parent, "label", None))

    def workflow_start(self, parent: Any, workflow: str, name: str | None, event: Any,
                       label: str) -> Any:
        return self.workflows.start(workflow, name, event, label,
                                    starter=getattr(parent, "function", None),
                                    caller_label=getattr(parent, "label", None))

    def task_complete(self, parent: Any, token: str, output: Any, error: Any) -> Any:
        return self.workflows.complete_task(token, output, error, caller_label=parent.label)

    def activity_get_task(self, parent: Any, activity: str, wait_s: float = 0.0) -> Any:
        return self.workflows.get_activity_task(activity, parent.label,
                                                wait_s=min(float(wait_s), 60.0))


# ====================================================================== CLI helpers
def _cli_view(store_url: str, manifest: Any, clearance: str,
              as_label: str | None) -> tuple[EngineDB, Lattice, str]:
    """Open the engine tables and decide the viewer's label (never above the clearance)."""
    lattice: Lattice = manifest.lattice
    viewer = lattice.check(as_label or clearance)
    if not lattice.flows(viewer, lattice.check(clearance)):
        raise FlowError(f"{viewer!r} is above the caller's clearance {clearance!r}")
    return EngineDB.open(store_url), lattice, viewer


def stream_put(store_url: str, manifest: Any, stream: str, record: Any,
               partition_key: str | None, *, clearance: str,
               as_label: str | None = None) -> dict[str, Any]:
    """`trapeze stream put`: append at the caller's clearance (or a lower label it names).

    A running runtime delivers the record within its poll interval (its scheduler reads the
    lanes from the shared store).
    """
    from trapeze.runtime.streams import StreamEngine

    db, lattice, label = _cli_view(store_url, manifest, clearance, as_label)
    try:
        eng = StreamEngine(db, lattice, manifest.streams, _no_invoke)
        return eng.put(stream, record, partition_key, label)
    finally:
        db.close()


def stream_tail(store_url: str, manifest: Any, stream: str, *, clearance: str,
                as_label: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """`trapeze stream tail`: the newest records the caller is cleared for."""
    from trapeze.runtime.streams import StreamEngine

    db, lattice, label = _cli_view(store_url, manifest, clearance, as_label)
    try:
        return StreamEngine(db, lattice, manifest.streams, _no_invoke).tail(stream, label,
                                                                              limit)
    finally:
        db.close()


def workflow_list(store_url: str, manifest: Any, *, clearance: str,
                  as_label: str | None = None, workflow: str | None = None
                  ) -> list[dict[str, Any]]:
    """`trapeze workflow list`: executions the caller may know of (see the module doc)."""
    db, lattice, label = _cli_view(store_url, manifest, clearance, as_label)
    try:
        return _viewer_engine(db, lattice, manifest).list(label, workflow)
    finally:
        db.close()


def workflow_describe(store_url: str, manifest: Any, execution: str, *, clearance: str,
                      as_label: str | None = None) -> dict[str, Any]:
    """`trapeze workflow describe EXECUTION` (an id, or a name: the newest visible one)."""
    db, lattice, label = _cli_view(store_url, manifest, clearance, as_label)
    try:
        return _viewer_engine(db, lattice, manifest).describe(execution, label)
    finally:
        db.close()


def _viewer_engine(db: EngineDB, lattice: Lattice, manifest: Any) -> WorkflowEngine:
    # Read-only use: definitions are parsed without the function check, nothing is resumed.
    return WorkflowEngine(db, lattice, manifest.workflows, _no_invoke)


def _no_invoke(function: str, event: Any, label: str) -> Any:
    raise RuntimeError("a viewing engine never invokes functions")
