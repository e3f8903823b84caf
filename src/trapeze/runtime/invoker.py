"""Runs invocations: admission, the response future, withheld replies, async retries.

This is the runtime's side of the monitor's `Dispatcher` protocol as well: synchronous and
asynchronous invokes from inside functions come back here, carrying the parent's label in the
runtime's own `Invocation` record (never in the payload).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack

from trapeze.errors import FlowError, InvocationError, LimitExceeded, NotFound
from trapeze.monitor import Invocation, Monitor
from trapeze.sandbox.spec import Outcome as SandboxOutcome

log = logging.getLogger("trapeze.runtime")

MAX_DEPTH = 8  # nested synchronous invokes; a cycle of invokes fails instead of hanging
# Events of pending asynchronous invocations held in memory at once (msgpack size).
MAX_PENDING_ASYNC_BYTES = 256 << 20

STATUSES = ("ok", "error", "withheld", "timeout", "refused")


def _callee_margin_s(parent: Invocation) -> float:
    """How long before its caller's deadline a synchronous callee that a response
    declassifier may cover is stopped: a tenth of what the caller has left, between 0.05
    and 0.5 s. A tenth, not more, because nested callees each take it again: a chain of
    MAX_DEPTH levels keeps 0.9 ** 8, 43 %, of the time (tests/attacks/test_review_fixes_s7.py)."""
    return min(0.5, max(0.05, 0.1 * parent.remaining_s()))


@dataclass(frozen=True)
class InvocationResult:
    """What the invoker sees. For a withheld reply nothing else is filled in."""

    status: str
    value: Any = None
    error: str | None = None
    request_id: str = ""
    # The label the invocation ended at, filled in only when it flows to the response bound
    # (so it is observable by the invoker). Trusted engines invoke with bound = top to get it.
    label: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


WITHHELD_MESSAGE = "the invocation's label was raised above the caller's; its reply is withheld"


class Outcome(Protocol):
    status: str
    value: Any
    error: str | None
    log: str
    duration_s: float


class Runner(Protocol):
    """A sandbox (or the baseline's warm worker) for one function."""

    def run(self, event: Any, context: dict[str, Any],
            on_call: Callable[[str, dict[str, Any]], Any]) -> Outcome: ...


class InvocationSink(Protocol):
    """Where finished invocations are recorded (logs with their label)."""

    def record_log(self, inv: Invocation, text: str) -> None: ...


@dataclass(frozen=True)
class FunctionLimits:
    timeout_s: float
    concurrency: int
    retries: int


class Admission:
    """A bounded number of running invocations plus a bounded queue, per function and overall.

    A request that finds the queue full is refused at once (the gateway answers 503), so
    overload never grows memory without bound.
    """

    def __init__(self, running: int, queued: int) -> None:
        self._slots = threading.BoundedSemaphore(running)
        self._capacity = running + queued
        self._inside = 0
        self._lock = threading.Lock()

    def enter(self, timeout: float) -> bool:
        with self._lock:
            if self._inside >= self._capacity:
                return False
            self._inside += 1
        if self._slots.acquire(timeout=timeout):
            return True
        with self._lock:
            self._inside -= 1
        return False

    def leave(self) -> None:
        self._slots.release()
        with self._lock:
            self._inside -= 1


class Invoker:
    def __init__(
        self,
        monitor: Monitor,
        runners: Mapping[str, Runner],
        limits: Mapping[str, FunctionLimits],
        sink: InvocationSink,
        *,
        concurrency: int = 64,
        queue: int = 256,
    ) -> None:
        self.monitor = monitor
        self.runners = dict(runners)
        self.limits = dict(limits)
        self.sink = sink
        self._overall = Admission(concurrency, queue)
        self._per_function = {
            name: Admission(lim.concurrency, queue) for name, lim in self.limits.items()
        }
        # Threads run invocation bodies; admission above bounds how many are busy at once.
        # Nested invokes and detached continuations need threads beyond the admitted ones.
        # Asynchronous invocations are driven (attempts, back-off) from a pool of their own,
        # whose size bounds how many asynchronous bodies run at once: a driver waits for its
        # body, and if drivers took threads of the body pool, 1,024 pending invocations could
        # hold every thread waiting for bodies that no thread is left to run (found in review:
        # the runtime wedged for good).
        self._async_drivers = ThreadPoolExecutor(max_workers=concurrency,
                                                 thread_name_prefix="trapeze-async")
        self._pool = ThreadPoolExecutor(
            max_workers=2 * concurrency * (MAX_DEPTH + 1) + queue,
            thread_name_prefix="trapeze-inv",
        )
        self._closed = False
        self._inflight = 0
        self._pending_async = 0
        self.executed = 0
        # Pending asynchronous invocations (events held in memory until they run): at most
        # `per_label` started by callers at each label — counted at the caller's label, the
        # label the refusal reaches, so that a refusal at L depends only on work started by
        # callers at L. Not at the target label, as before: a public caller starting work at
        # `secret` was refused when secret code had filled secret's quota, one bit per call
        # about secret activity (review, session 6). At most `overall` in all (memory:
        # docs/security-model.md on shared resources).
        self._max_pending_per_label = queue * 4
        self._max_pending_async = queue * 16
        self._max_pending_bytes = MAX_PENDING_ASYNC_BYTES
        self._pending_by_label: dict[str, int] = {}
        self._pending_bytes = 0
        self._idle = threading.Condition()

    # ------------------------------------------------------------------ entry points
    def invoke(
        self,
        function: str,
        event: Any,
        *,
        label: str,
        response_bound: str | None = None,
        principal: str | None = None,
        request_id: str | None = None,
    ) -> InvocationResult:
        """A top-level synchronous invocation (HTTP request, CLI, API)."""
        request_id = request_id or uuid.uuid4().hex
        if function not in self.runners:
            return InvocationResult("refused", error=f"no function named {function!r}",
                                    request_id=request_id)
        if self._closed:
            return InvocationResult("refused", error="the runtime is shutting down",
                                    request_id=request_id)
        fn_adm = self._per_function[function]
        if not self._overall.enter(timeout=30.0):
            return InvocationResult("refused", error="busy: the overall queue is full",
                                    request_id=request_id)
        if not fn_adm.enter(timeout=30.0):
            self._overall.leave()
            return InvocationResult(
                "refused", error=f"busy: the queue of {function!r} is full",
                request_id=request_id,
            )

        # The invocation holds its admission until its body ends, not until its reply: a
        # withheld reply comes at the raise and the body runs on detached, and those bodies
        # must count against the function's and the runtime's concurrency like any other.
        def release() -> None:
            fn_adm.leave()
            self._overall.leave()

        try:
            inv = self._new_invocation(function, label, response_bound or label, principal,
                                       request_id=request_id)
            response = self._start(inv, event, on_done=release)
        except BaseException:
            release()
            raise
        return response.result()

    def _new_invocation(
        self, function: str, label: str, bound: str, principal: str | None, *,
        parent: Invocation | None = None, request_id: str | None = None,
    ) -> Invocation:
        return Invocation(
            request_id=request_id or uuid.uuid4().hex,
            function=function,
            label=label,
            response_bound=bound,
            deadline=time.time() + self.limits[function].timeout_s,
            principal=principal,
            parent=parent.request_id if parent else None,
            depth=parent.depth + 1 if parent else 0,
        )

    def _start(self, inv: Invocation, event: Any,
               on_done: Callable[[], None] | None = None) -> Future[InvocationResult]:
        """Run `inv` on a pool thread; the future resolves with the invoker's reply.

        The reply is the withheld one as soon as the label rises above the response bound;
        the body then runs on, detached, and what it does is recorded only at its label.
        """
        response: Future[InvocationResult] = Future()

        def withhold(_: Invocation) -> None:
            if not response.done():
                response.set_result(InvocationResult("withheld", error=WITHHELD_MESSAGE,
                                                     request_id=inv.request_id))

        inv.on_withheld = withhold
        with self._idle:
            self._inflight += 1
        try:
            self._pool.submit(self._body, inv, event, response, on_done)
        except BaseException:
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()
            raise
        return response

    def _body(self, inv: Invocation, event: Any, response: Future[InvocationResult],
              on_done: Callable[[], None] | None = None) -> None:
        try:
            result = self._execute(inv, event)
            if not response.done():
                response.set_result(result)
        except BaseException as e:  # never leave an invoker waiting forever
            log.exception("invocation %s failed inside the runtime", inv.request_id)
            if not response.done():
                response.set_result(self._internal_error_reply(inv, e))
        finally:
            if on_done is not None:
                on_done()
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()

    def _execute(self, inv: Invocation, event: Any) -> InvocationResult:
        runner = self.runners[inv.function]
        monitor = self.monitor
        self.executed += 1  # benchmarks count invocations (an approximate counter is fine)

        def on_call(op: str, args: dict[str, Any]) -> Any:
            return monitor.handle(inv, op, args)

        outcome = runner.run(event, inv.context_for_guest(), on_call)
        text = outcome.log
        if outcome.status != "ok" and outcome.error:
            # The failure itself belongs in the invocation's log, at the invocation's label.
            text += f"[trapeze] {outcome.status}: {outcome.error}\n"
        self.sink.record_log(inv, text)
        if outcome.status == "protocol":
            monitor.audit.record("protocol", inv, {"reason": outcome.error or ""})
        elif outcome.status in ("timeout", "crash"):
            monitor.audit.record("kill" if outcome.status == "crash" else "timeout", inv,
                                 {"reason": outcome.error or ""})
        return self._reply(inv, outcome)

    def _internal_error_reply(self, inv: Invocation, exc: BaseException) -> InvocationResult:
        """The reply when the runtime itself failed while running `inv`: the same rules as
        for a function that failed at the label it had reached (an engine reading a reply
        without a label would otherwise take it for a failure at the label it started at)."""
        failed = SandboxOutcome("error", error=f"internal error ({type(exc).__name__})")
        try:
            return self._reply(inv, failed)
        except Exception:
            log.exception("reply to %s", inv.request_id)
            if self.monitor.lattice.flows(inv.label, inv.response_bound):
                return InvocationResult("error", error=failed.error, request_id=inv.request_id,
                                        label=inv.label)
            return InvocationResult("withheld", error=WITHHELD_MESSAGE,
                                    request_id=inv.request_id)

    def _reply(self, inv: Invocation, outcome: Outcome) -> InvocationResult:
        """The reply to the invoker, given the final label (DESIGN §6)."""
        rid = inv.request_id
        visible = self.monitor.lattice.flows(inv.label, inv.response_bound)
        if not visible:
            declassifier = inv.reply_declassifier
            if declassifier is None:
                return InvocationResult("withheld", error=WITHHELD_MESSAGE, request_id=rid)
            # The label rose above the bound under a response declassifier: every outcome
            # goes through it, so that whether the function returned, failed, timed out,
            # crashed or escaped beyond the declassifier's max_label after reading data
            # above the bound reaches the invoker only as the declassifier decides.
            if inv.escaped_at is not None:
                status, payload, at = "withheld", None, inv.escaped_at
            else:
                status = outcome.status if outcome.status in ("ok", "timeout") else (
                    "crash" if outcome.status in ("crash", "eof", "protocol") else "error")
                payload = outcome.value if status == "ok" else None
                at = inv.label
            try:
                value = self.monitor.declassify(inv, declassifier, "response", payload,
                                                status=status, label=at)
            except FlowError as e:  # audited by the monitor; the refusal is the declared flow
                return InvocationResult("error", error=str(e), request_id=rid)
            return InvocationResult("ok", value=value, request_id=rid)
        status = outcome.status if outcome.status in ("ok", "timeout") else "error"
        value = outcome.value if status == "ok" else None
        return InvocationResult(status, value=value, error=outcome.error, request_id=rid,
                                label=inv.label)

    # ------------------------------------------------------------------ Dispatcher protocol
    def invoke_sync(self, parent: Invocation, function: str, event: Any) -> Any:
        if function not in self.runners:
            raise NotFound(f"no function named {function!r}")
        if parent.depth + 1 > MAX_DEPTH:
            raise LimitExceeded(f"synchronous invokes nest deeper than {MAX_DEPTH}")
        # The callee runs at the caller's current label and answers to it.
        inv = self._new_invocation(function, parent.label, parent.label, parent.principal,
                                   parent=parent)
        # Never beyond the caller's deadline: a callee left running after its caller has
        # ended is counted by no admission (review: 20 requests with concurrency 2 left 20
        # bodies running). The sandbox enforces the earlier of this and its own timeout.
        # And ended a little before it: a callee that raised under a response declassifier
        # and then ran on to the deadline (on data above its caller) must not end its caller
        # too, for then the caller's outcome, not the declassifier, would tell which way
        # the callee went (review, session 7, tests/attacks/test_review_error_paths.py).
        # The margin is the time the caller gets to take the declassified timeout reply;
        # where no declassifier could release a reply to the caller's label (a fact of the
        # manifest and that label, not of data), there is nothing to protect and none.
        margin = (_callee_margin_s(parent)
                  if self.monitor.response_declassifiable(parent.label) else 0.0)
        inv.deadline = min(inv.deadline, parent.deadline - margin)
        # Waited for no longer than the caller may run: a caller blocked here holds a thread
        # of the body pool, and must give it back even if its callee never got one.
        try:
            result = self._start(inv, event).result(timeout=parent.remaining_s())
        except FutureTimeout:
            raise InvocationError(
                f"{function} did not reply before the caller's deadline") from None
        if result.status == "ok":
            return result.value
        raise InvocationError(f"{function} returned status {result.status}: {result.error}")

    def invoke_async(self, parent: Invocation, function: str, event: Any, label: str) -> str:
        if function not in self.runners:
            raise NotFound(f"no function named {function!r}")
        size = len(msgpack.packb(event, use_bin_type=True))
        quota = parent.label  # the label this call's reply (and any refusal) goes to
        with self._idle:
            at_label = self._pending_by_label.get(quota, 0)
            if at_label >= self._max_pending_per_label:
                raise LimitExceeded(
                    f"too many asynchronous invocations pending from callers at label "
                    f"{quota!r} (at most {self._max_pending_per_label}); retry later"
                )
            if (self._pending_async >= self._max_pending_async
                    or self._pending_bytes + size > self._max_pending_bytes):
                raise LimitExceeded(
                    f"too many asynchronous invocations pending (at most "
                    f"{self._max_pending_async}, {self._max_pending_bytes >> 20} MiB of "
                    "events); retry later"
                )
            self._pending_async += 1
            self._pending_by_label[quota] = at_label + 1
            self._pending_bytes += size
        request_id = uuid.uuid4().hex
        try:
            self._async_drivers.submit(self._run_with_retries, parent, function, event, label,
                                       request_id, size, quota)
        except BaseException:
            self._async_done(quota, size)
            raise
        return request_id

    def _async_done(self, quota: str, size: int) -> None:
        with self._idle:
            self._pending_async -= 1
            self._pending_bytes -= size
            left = self._pending_by_label.pop(quota) - 1
            if left:
                self._pending_by_label[quota] = left
            self._idle.notify_all()

    def _run_with_retries(self, parent: Invocation, function: str, event: Any, label: str,
                          request_id: str, size: int, quota: str) -> None:
        # Nobody waits for an asynchronous invocation: its bound is top, and what it returns
        # is recorded in its log at its own label. Each attempt starts afresh at `label`.
        try:
            self._attempts(parent, function, event, label, request_id)
        finally:
            self._async_done(quota, size)

    def _attempts(self, parent: Invocation, function: str, event: Any, label: str,
                  request_id: str) -> None:
        attempts = self.limits[function].retries + 1
        for attempt in range(attempts):
            rid = request_id if attempt == 0 else f"{request_id}.{attempt}"
            inv = self._new_invocation(function, label, self.monitor.lattice.top,
                                       parent.principal, parent=parent, request_id=rid)
            inv.depth = 0  # asynchronous work does not nest in the caller's thread
            result = self._start(inv, event).result()
            if result.status == "ok":
                return
            # An attempt that raised its label and then failed failed at the raised label:
            # retrying it at `label` would let `label` count the failure (one more invocation,
            # one more round of its low effects). Later attempts start at the label it ended
            # at (bound = top, so it is known; labels only rise, so it is above `label`), as
            # detached stream retries do.
            if result.label is not None:
                label = result.label
            if attempt + 1 < attempts:
                time.sleep(min(0.1 * 2**attempt, 5.0))

    # Streams and workflows live in their engines (runtime/streams.py, workflows.py); the
    # runtime attaches them after both exist.
    engines: Any = None

    def _engines(self) -> Any:
        if self.engines is None:
            raise NotFound("streams and workflows are not running in this runtime")
        return self.engines

    def stream_put(self, parent: Invocation, stream: str, record: Any,
                   partition_key: str | None, label: str) -> Any:
        return self._engines().stream_put(parent, stream, record, partition_key, label)

    def workflow_start(self, parent: Invocation, workflow: str, name: str | None, event: Any,
                       label: str) -> Any:
        return self._engines().workflow_start(parent, workflow, name, event, label)

    def task_complete(self, parent: Invocation, token: str, output: Any, error: Any) -> Any:
        return self._engines().task_complete(parent, token, output, error)

    # ------------------------------------------------------------------ lifecycle
    def busy(self) -> bool:
        with self._idle:
            return bool(self._inflight or self._pending_async)

    def drain(self, timeout: float) -> bool:
        """Stop admitting work and wait for in-flight invocations (clean shutdown)."""
        self._closed = True
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self) -> None:
        self._closed = True
        self._async_drivers.shutdown(wait=False, cancel_futures=True)
        self._pool.shutdown(wait=False, cancel_futures=True)

