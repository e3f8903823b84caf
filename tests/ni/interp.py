"""Reference interpreter of the guest language, written from DESIGN §4-§6 alone.

It shares nothing with the platform but the value folding in `nilib` (which is part of the
language, not of the platform). It produces a `Trace` in the same shape the harness records
from the real platform, so the differential test is a plain equality.

Modelled: the faceted store (§5: write rule, newest visible facet, tombstones, facets, scan,
conditional put), labels only going up (§4), sync invokes at the caller's label answering to
it, async invokes at the current or a named higher label with the runtime's retries (a retry
starts at the label the failed attempt ended at), channel outputs allowed iff current ⊑ bound
with a FlowError otherwise (§6), the withheld reply at the moment of a raise above the
response bound, and logs/audit entries kept at the label an invocation ends with. Streams
(§4, §9, docs/streams-and-workflows.md): a record is put at the current or a named higher
label (a lower one is a FlowError), numbered per label, and delivered to the consumer at its
own label (batches never mix labels), which prints one line per record.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from ni import nilib
from ni.lang import (
    ASYNC,
    ASYNC_RETRIES,
    CALLEE,
    CHANNEL_BOUND,
    CONSUMER,
    ENTRY,
    KEYS,
    TABLES,
    WF_SECRET,
    WF_TASK,
    Case,
    CondPut,
    Crash,
    CurLabel,
    Delete,
    Expr,
    Facets,
    Fail,
    Get,
    If,
    Invoke,
    InvokeAsync,
    Lit,
    Loop,
    Plus,
    Print,
    Program,
    Put,
    Raise,
    Reg,
    Return,
    Scan,
    Send,
    Spin,
    Stmt,
    StreamPut,
    WfStart,
    consumer_line,
    flows,
    wf_task_line,
)
from ni.trace import Trace, Window, record_value, request_event_x, seed_value

TOMB = object()  # a tombstone facet's value


class Store:
    """DESIGN §5, literally: facets (value, label, seq) per (table, key)."""

    def __init__(self) -> None:
        self.facets: dict[tuple[str, str], list[tuple[Any, str, int]]] = {}
        self._seq = itertools.count(1)

    def put(self, t: str, k: str, value: Any, label: str) -> None:
        kept = [f for f in self.facets.get((t, k), []) if not flows(label, f[1])]
        self.facets[(t, k)] = [*kept, (value, label, next(self._seq))]

    def _newest(self, t: str, k: str, label: str) -> Any:
        visible = [f for f in self.facets.get((t, k), []) if flows(f[1], label)]
        if not visible:
            return None
        value = max(visible, key=lambda f: f[2])[0]
        return None if value is TOMB else value

    def get(self, t: str, k: str, label: str) -> Any:
        return self._newest(t, k, label)

    def delete(self, t: str, k: str, label: str) -> None:
        self.put(t, k, TOMB, label)

    def cond_put(self, t: str, k: str, value: Any, expect: Any, label: str) -> bool:
        if self.get(t, k, label) != expect:
            return False
        self.put(t, k, value, label)
        return True

    def visible_facets(self, t: str, k: str, label: str) -> list[tuple[Any, str]]:
        fs = sorted(self.facets.get((t, k), []), key=lambda f: -f[2])
        return [(v, lab) for v, lab, _ in fs if flows(lab, label) and v is not TOMB]

    def scan(self, t: str, label: str) -> list[tuple[str, Any]]:
        out = []
        for k in sorted({k for (tt, k) in self.facets if tt == t}):
            v = self.get(t, k, label)
            if v is not None:
                out.append((k, v))
        return out

    def raw(self, t: str, k: str) -> list[tuple[str, Any, bool]]:
        fs = sorted(self.facets.get((t, k), []), key=lambda f: -f[2])
        return [(lab, None if v is TOMB else v, v is TOMB) for v, lab, _ in fs]


class GuestError(Exception):
    """An exception raised by a guest API call (kind = the guest-side class name)."""

    def __init__(self, kind: str, text: str = "") -> None:
        super().__init__(text)
        self.kind = kind


class Finished(Exception):
    def __init__(self, status: str, value: Any = None, error: str = "") -> None:
        self.status, self.value, self.error = status, value, error


@dataclass
class Inv:
    function: str
    label: str
    bound: str
    withheld: bool = False
    log: list[str] = field(default_factory=list)


class Interpreter:
    def __init__(self, case: Case, world: str) -> None:
        self.case = case
        self.world = world
        self.store = Store()
        self.window = Window()
        self.pending: list[tuple[str, int, str]] = []  # async invocations (slot, x, label)
        self.final_label = ""  # the label the last finished invocation ended at
        self.trace = Trace()
        self.counts: dict[str, int] = {}  # stream records put so far, per label
        # The only facet of the workflow's table (written by the harness, read by its task).
        self.wf_secret = seed_value(case, WF_SECRET, world)

    # ------------------------------------------------------------------ running requests
    def run(self) -> Trace:
        for s in self.case.seed:
            self.store.put(s.t, s.k, seed_value(self.case, s, self.world), s.label)
        trace = self.trace
        self.window = trace.setup
        for r in self.case.records:
            self.stream_put(r.part, record_value(self.case, r, self.world), r.label)
        for req in self.case.requests:
            self.window = Window()
            status, value, error = self.invoke(req.slot, request_event_x(self.case, req,
                                                                         self.world),
                                               req.label, req.label)
            # Async work runs after its parent (it is always the parent's last action).
            while self.pending:
                slot, x, label = self.pending.pop(0)
                for _attempt in range(ASYNC_RETRIES + 1):
                    if self.invoke(slot, x, label, "top")[0] == "ok":
                        break
                    # A retry starts at the label the failed attempt ended at: retrying a
                    # failure above `label` at `label` would let `label` count it.
                    label = self.final_label
            trace.responses.append((req.label, status, value, error))
            trace.windows.append(self.window)
        for t in TABLES:
            for k in KEYS:
                trace.raw[(t, k)] = self.store.raw(t, k)
        return trace

    def invoke(self, slot: str, x: int, label: str, bound: str) -> tuple[str, Any, str]:
        """Run one invocation to its end; the invoker's reply as (status, value, error kind)."""
        inv = Inv(slot, label, bound)
        prog: Program = self.case.programs[slot]
        regs = [nilib.num(x), 0, 0]
        try:
            try:
                self.block(prog.body, inv, regs)
                if prog.tail is not None:
                    self.tail(prog.tail, inv, regs)
                self.end(prog.end, regs)
            except GuestError as e:  # uncaught: the handler fails with it
                raise Finished("error", error=e.kind) from None
        except Finished as f:
            outcome = f
        self.final_label = inv.label
        if outcome.status != "ok":
            # the runtime notes a failure in the invocation's own log
            inv.log.append(f"[trapeze] {outcome.status}: {outcome.error or outcome.status}\n")
        if inv.log:
            self.window.logs.append((slot, inv.label, "".join(inv.log).rstrip("\n")))
        if outcome.status == "timeout":
            self.window.audit.append(("timeout", slot, inv.label))
        elif outcome.status == "crash":
            self.window.audit.append(("kill", slot, inv.label))
        return self.reply(inv, outcome)

    def reply(self, inv: Inv, outcome: Finished) -> tuple[str, Any, str]:
        """What the invoker gets (§6): the withheld reply once the label rose above the bound."""
        if inv.withheld or not flows(inv.label, inv.bound):
            return ("withheld", None, "withheld")
        if outcome.status == "ok":
            return ("ok", outcome.value, "")
        if outcome.status == "timeout":
            return ("timeout", None, "timeout")
        return ("error", None, outcome.error)

    # ------------------------------------------------------------------ statements
    def expr(self, e: Expr, regs: list[int]) -> int:
        if isinstance(e, Lit):
            return e.n
        if isinstance(e, Reg):
            return regs[e.i]
        assert isinstance(e, Plus)
        return (self.expr(e.a, regs) + self.expr(e.b, regs)) % nilib.MOD

    def block(self, stmts: tuple[Stmt, ...], inv: Inv, regs: list[int]) -> None:
        for s in stmts:
            self.stmt(s, inv, regs)

    def stmt(self, s: Stmt, inv: Inv, regs: list[int]) -> None:
        st, lab = self.store, inv.label
        if isinstance(s, Get):
            regs[s.dst] = nilib.num(st.get(s.t, s.k, lab))
        elif isinstance(s, Put):
            st.put(s.t, s.k, self.expr(s.e, regs), lab)
        elif isinstance(s, Delete):
            st.delete(s.t, s.k, lab)
        elif isinstance(s, CondPut):
            regs[s.dst] = nilib.num(st.cond_put(s.t, s.k, self.expr(s.e, regs), s.expect, lab))
        elif isinstance(s, Scan):
            regs[s.dst] = nilib.num(st.scan(s.t, lab))
        elif isinstance(s, Facets):
            regs[s.dst] = nilib.num(st.visible_facets(s.t, s.k, lab))
        elif isinstance(s, CurLabel):
            regs[s.dst] = nilib.num(lab)
        elif isinstance(s, Print):
            inv.log.append(f"p {self.expr(s.e, regs)}\n")
        elif isinstance(s, Raise):
            self.guard(lambda: self.raise_label(inv, s.label), s.catch, regs, 0)
        elif isinstance(s, Send):
            v = self.expr(s.e, regs)
            self.guard(lambda: self.send(inv, s.channel, v, regs, s.dst), s.catch, regs, s.dst)
        elif isinstance(s, StreamPut):
            v = self.expr(s.e, regs)
            self.guard(lambda: self.guest_stream_put(inv, s, v, regs), s.catch, regs, s.dst)
        elif isinstance(s, WfStart):
            v = self.expr(s.e, regs)
            self.guard(lambda: self.wf_start(inv, s, v, regs), s.catch, regs, s.dst)
        elif isinstance(s, Invoke):
            if s.text and s.catch:
                raise AssertionError("error-text probes are not modelled")  # see `modelled`
            v = self.expr(s.e, regs)
            self.guard(lambda: self.sync_invoke(inv, s.slot, v, regs, s.dst), s.catch, regs,
                       s.dst)
        elif isinstance(s, If):
            self.block(s.then if regs[s.reg] % 2 == 0 else s.orelse, inv, regs)
        elif isinstance(s, Loop):
            for _ in range(regs[s.reg] % 3):
                self.block(s.body, inv, regs)
        else:
            raise TypeError(s)

    @staticmethod
    def guard(action: Any, catch: bool, regs: list[int], dst: int) -> None:
        try:
            action()
        except GuestError as e:
            if not catch:
                raise
            regs[dst] = nilib.ERROR_CODES.get(e.kind, 199)

    def raise_label(self, inv: Inv, new: str) -> None:
        if not flows(inv.label, new):
            self.window.audit.append(("refused", inv.function, inv.label))
            raise GuestError("FlowError")
        if new == inv.label:
            return
        inv.label = new
        self.window.audit.append(("raise", inv.function, new))
        if not flows(new, inv.bound):
            inv.withheld = True  # the reply is fixed now, whatever follows

    def send(self, inv: Inv, channel: str, v: int, regs: list[int], dst: int) -> None:
        if not flows(inv.label, CHANNEL_BOUND[channel]):
            self.window.audit.append(("refused", inv.function, inv.label))
            raise GuestError("FlowError")
        self.window.outputs.append((channel, f"v{v}", str(v)))
        regs[dst] = nilib.num(200 if channel.startswith("web") else 1)

    def stream_put(self, part: str, v: int, label: str) -> None:
        n = self.counts[label] = self.counts.get(label, 0) + 1
        self.trace.stream.append((part, label, n, v))
        # Delivered at its own label, so the consumer's line is at that label; it runs before
        # the window closes (the harness waits for every record to be delivered).
        self.window.logs.append((CONSUMER, label, consumer_line(part, v, label)))

    def guest_stream_put(self, inv: Inv, s: StreamPut, v: int, regs: list[int]) -> None:
        target = inv.label if s.label is None else s.label
        if not flows(inv.label, target):
            self.window.audit.append(("refused", inv.function, inv.label))
            raise GuestError("FlowError")
        self.stream_put(s.part, v, target)
        regs[s.dst] = nilib.num(target)

    def wf_start(self, inv: Inv, s: WfStart, v: int, regs: list[int]) -> None:
        """An execution at the current label. A name clashes only with an execution the
        starter can see (its start label flows to the starter's label); the task runs at
        the execution's label, prints, and returns its input, so the execution succeeds
        there with the input as its output."""
        name = s.name or "<auto>"
        if s.name is not None and any(e[0] == s.name and flows(e[1], inv.label)
                                      for e in self.trace.workflows):
            raise GuestError("AlreadyExists")
        start = inv.label
        end, status, output = self.wf_outcome(v, start)
        if end != start:
            self.window.audit.append(("raise", WF_TASK, end))
        self.trace.workflows.append((name, start, status, output, end))
        # The task's log is kept at the label its invocation ended at.
        self.window.logs.append((WF_TASK, end, wf_task_line(v)))
        regs[s.dst] = 1

    def wf_outcome(self, v: int, start: str) -> tuple[str, str, int | None]:
        """What the task and the Choice make of an execution started at `start` with `v`
        (lang.WF_TASK_SOURCE, WF_DEFINITION): its end label, status and output value."""
        end = start
        if v % 2:
            if start not in ("high", "top"):
                end = "high"
            secret = self.wf_secret if flows(WF_SECRET.label, end) else 0
            v = (v + secret) % nilib.MOD
        if v % 3 == 0:
            return end, "FAILED", None
        return end, "SUCCEEDED", v

    def sync_invoke(self, inv: Inv, slot: str, v: int, regs: list[int], dst: int) -> None:
        status, value, _ = self.invoke(slot, v, inv.label, inv.label)
        if status != "ok":
            raise GuestError("InvocationError")
        regs[dst] = nilib.num(value)

    def tail(self, a: InvokeAsync, inv: Inv, regs: list[int]) -> None:
        def start() -> None:
            target = inv.label if a.label is None else a.label
            if not flows(inv.label, target):
                self.window.audit.append(("refused", inv.function, inv.label))
                raise GuestError("FlowError")
            self.pending.append((a.slot, self.expr(a.e, regs), target))

        self.guard(start, a.catch, regs, 0)

    def end(self, t: Any, regs: list[int]) -> None:
        if isinstance(t, Return):
            raise Finished("ok", self.expr(t.e, regs))
        if isinstance(t, Fail):
            raise Finished("error", error="RuntimeError")
        if isinstance(t, Spin):
            raise Finished("timeout")
        assert isinstance(t, Crash)
        raise Finished("crash", error="crash")


def modelled(case: Case) -> bool:
    """Whether the interpreter predicts this case (error-text probes depend on platform
    message wording, which the design does not fix)."""

    def probes(stmts: tuple[Stmt, ...]) -> bool:
        for s in stmts:
            if isinstance(s, Invoke) and s.text and s.catch:
                return True
            if isinstance(s, If) and (probes(s.then) or probes(s.orelse)):
                return True
            if isinstance(s, Loop) and probes(s.body):
                return True
        return False

    # Only programs a request can reach matter: entries call f2 and f3, the others nothing.
    used = {r.slot for r in case.requests}
    if used & set(ENTRY):
        used |= {CALLEE, ASYNC}
    return not any(probes(case.programs[slot].body) for slot in used)


def interpret(case: Case, world: str = "A") -> Trace:
    return Interpreter(case, world).run()
