"""The guest-program language of the noninterference tests: AST, compiler, generator.

A *case* is everything one test run needs: a program for each of the four function slots, an
initial store (as a list of labelled puts), a list of top-level requests, an observer label
and the two worlds' secrets. Programs are not parsed from text; Hypothesis builds the AST
directly and shrinks it, `compile_program` turns it into a real handler module, and
`ni.interp` runs the same AST against DESIGN §5-§6.

Slots and their roles keep every run deterministic at the observer (so that a difference
between the two worlds is a leak, not a race):

* f0, f1 (entry): anything, at most two synchronous invokes of f2 (outside loops, so the
  caller's timeout covers them), and optionally one asynchronous invoke of f3 as the last
  thing before the terminator (so the async callee never races with its parent's writes);
* f2 (sync callee): no invokes; a raise only at top level, followed by reads only, because
  after a raise the caller gets its withheld reply and runs on concurrently with f2;
* f3 (async target): no invokes.

Stream puts go to the app's one stream, `s0`, in partition p0 or p1 (named per run, so that
every run starts with fresh delivery lanes), at the current label or a named one. Its
consumer, `c0`, is not generated: it prints one line per record it gets (partition, value,
the record's own label), so what a consumer at label L saw is in a log at L, whatever the
batching.

Workflow starts go to the app's one workflow, `w0`: a Task state whose function, `wt`, is
not generated either, then a Choice between Fail and Succeed. The task prints the execution's
input (`w` and the value); for an odd value it raises to `high` (unless it runs at `high` or
`top` already) and adds the workflow's secret (a facet at `high` of a table only the harness
writes, different in the two worlds when the observer is below `high`); it returns the sum,
and the Choice fails the execution when that is a multiple of 3. So an execution's label may
rise, and its status and output then depend on data above its start label. An execution is
started at the current label, unnamed or named `n0`/`n1` (per run); a name already taken by an
execution visible at the starter's label fails with AlreadyExists. Every execution visible at
the observer is observed as (name, start label, status, output, label) through the
platform's own listing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

# ---------------------------------------------------------------------------- the universe

# bottom ⊑ low ⊑ mid:a, mid:b ⊑ high ⊑ top (mid:a and mid:b incomparable).
LABELS = ("bottom", "low", "mid:a", "mid:b", "high", "top")
OBSERVERS = ("bottom", "low", "mid:a", "high")  # top has nothing above it to keep secret
TABLES = ("t0", "t1")
KEYS = ("k0", "k1", "k2")
NREGS = 3
SLOTS = ("f0", "f1", "f2", "f3")
ENTRY, CALLEE, ASYNC = ("f0", "f1"), "f2", "f3"
STREAM, CONSUMER = "s0", "c0"
WORKFLOW, WF_TASK = "w0", "wt"
WF_NAMES = ("n0", "n1")
WF_TABLE = "tw"  # read by the workflow's task only; the harness writes its one facet
PARTITIONS = ("p0", "p1")

# Channels: (name, kind, bound). Email channels are told apart by their sender address,
# HTTP channels by their URL prefix on the world's web server.
CHANNELS = (
    ("web_low", "http", "low"),
    ("web_mida", "http", "mid:a"),
    ("mail_low", "smtp", "low"),
    ("mail_high", "smtp", "high"),
)
CHANNEL_BOUND = {name: bound for name, _, bound in CHANNELS}

# Timeouts: callers outlive their callees by a wide margin, so whether a caller sees its
# callee's timeout never depends on scheduling.
TIMEOUTS = {"f0": 2.0, "f1": 2.0, "f2": 0.5, "f3": 0.5, CONSUMER: 2.0, WF_TASK: 2.0}
ASYNC_RETRIES = 1


# ----------------------------------------------------------------------------------- AST
@dataclass(frozen=True)
class Lit:
    n: int


@dataclass(frozen=True)
class Reg:
    i: int


@dataclass(frozen=True)
class Plus:
    a: Expr
    b: Expr


Expr = Lit | Reg | Plus


@dataclass(frozen=True)
class Get:
    t: str
    k: str
    dst: int


@dataclass(frozen=True)
class Put:
    t: str
    k: str
    e: Expr


@dataclass(frozen=True)
class Delete:
    t: str
    k: str


@dataclass(frozen=True)
class CondPut:
    t: str
    k: str
    e: Expr
    expect: int | None
    dst: int


@dataclass(frozen=True)
class Scan:
    t: str
    dst: int


@dataclass(frozen=True)
class Facets:
    t: str
    k: str
    dst: int


@dataclass(frozen=True)
class CurLabel:
    dst: int


@dataclass(frozen=True)
class Print:
    e: Expr


@dataclass(frozen=True)
class Raise:
    label: str
    catch: bool  # catch a FlowError into r0 instead of failing


@dataclass(frozen=True)
class Send:
    channel: str
    e: Expr
    dst: int
    catch: bool


@dataclass(frozen=True)
class Invoke:
    slot: str
    e: Expr
    dst: int
    catch: bool
    text: bool  # the caught error's text (not just its class) goes into dst


@dataclass(frozen=True)
class InvokeAsync:
    slot: str
    e: Expr
    label: str | None
    catch: bool


@dataclass(frozen=True)
class StreamPut:
    part: str  # a partition of PARTITIONS
    e: Expr  # the record is {"v": e}
    label: str | None  # None: the current label (the guest API's streams.put)
    dst: int  # gets the label part of the returned sequence number
    catch: bool


@dataclass(frozen=True)
class WfStart:
    e: Expr  # the execution's input is {"v": e}
    name: str | None  # one of WF_NAMES (per run), or None: the platform names it
    dst: int  # gets 1 once started
    catch: bool


@dataclass(frozen=True)
class If:
    reg: int
    then: tuple[Stmt, ...]
    orelse: tuple[Stmt, ...]


@dataclass(frozen=True)
class Loop:
    reg: int  # runs num(reg) % 3 times
    body: tuple[Stmt, ...]


Stmt = (Get | Put | Delete | CondPut | Scan | Facets | CurLabel | Print | Raise | Send
        | StreamPut | WfStart | Invoke | If | Loop)


@dataclass(frozen=True)
class Return:
    e: Expr


@dataclass(frozen=True)
class Fail:
    e: Expr


@dataclass(frozen=True)
class Spin:
    pass


@dataclass(frozen=True)
class Crash:
    pass


Term = Return | Fail | Spin | Crash


@dataclass(frozen=True)
class Program:
    body: tuple[Stmt, ...]
    tail: InvokeAsync | None
    end: Term


@dataclass(frozen=True)
class Request:
    slot: str
    label: str
    x: int  # the event's value in world A
    x_b: int  # ... in world B: used only when the request's label is not ⊑ the observer


@dataclass(frozen=True)
class SeedPut:
    t: str
    k: str
    label: str
    value: int  # world A
    value_b: int  # world B: used only when the label is not ⊑ the observer


# The workflow's secret: what its task reads after raising to high (see WF_TASK_SOURCE).
WF_SECRET = SeedPut(WF_TABLE, "k0", "high", 5, 7)


@dataclass(frozen=True)
class SeedRecord:
    part: str
    label: str
    value: int  # world A
    value_b: int  # world B: used only when the label is not ⊑ the observer


@dataclass(frozen=True)
class Case:
    programs: dict[str, Program] = field(hash=False)
    seed: tuple[SeedPut, ...]
    requests: tuple[Request, ...]
    observer: str
    concurrent: bool
    records: tuple[SeedRecord, ...] = ()  # stream records put before the requests, in order


# ---------------------------------------------------------------------------- labels (model)
# Written out directly from the manifest's Hasse diagram, independently of trapeze.labels.
_ABOVE = {
    "bottom": set(LABELS),
    "low": {"low", "mid:a", "mid:b", "high", "top"},
    "mid:a": {"mid:a", "high", "top"},
    "mid:b": {"mid:b", "high", "top"},
    "high": {"high", "top"},
    "top": {"top"},
}


def flows(a: str, b: str) -> bool:
    return b in _ABOVE[a]


# ------------------------------------------------------------------------------ compiler
NILIB_SOURCE = (Path(__file__).parent / "nilib.py").read_text()


def _expr(e: Expr) -> str:
    if isinstance(e, Lit):
        return str(e.n)
    if isinstance(e, Reg):
        return f"r[{e.i}]"
    return f"(({_expr(e.a)}) + ({_expr(e.b)})) % MOD"


def table_name(gen: str, t: str) -> str:
    # Each run gets fresh tables, so no store reset is needed between examples.
    return f"{gen}.{t}"


def _stmt(s: Stmt, ind: str) -> list[str]:
    def guarded(lines: list[str], catch: bool, on_error: str) -> list[str]:
        if not catch:
            return [ind + ln for ln in lines]
        return ([ind + "try:"] + [ind + "    " + ln for ln in lines]
                + [ind + "except Exception as exc:", ind + f"    {on_error}"])

    if isinstance(s, Get):
        return [f"{ind}r[{s.dst}] = num(kv.get(T[{s.t!r}], {s.k!r}))"]
    if isinstance(s, Put):
        return [f"{ind}kv.put(T[{s.t!r}], {s.k!r}, {_expr(s.e)})"]
    if isinstance(s, Delete):
        return [f"{ind}kv.delete(T[{s.t!r}], {s.k!r})"]
    if isinstance(s, CondPut):
        return [f"{ind}r[{s.dst}] = num(kv.put(T[{s.t!r}], {s.k!r}, {_expr(s.e)}, "
                f"expect={s.expect!r}))"]
    if isinstance(s, Scan):
        return [f"{ind}r[{s.dst}] = num(kv.scan(T[{s.t!r}]))"]
    if isinstance(s, Facets):
        return [f"{ind}r[{s.dst}] = num(kv.facets(T[{s.t!r}], {s.k!r}))"]
    if isinstance(s, CurLabel):
        return [f"{ind}r[{s.dst}] = num(label.current())"]
    if isinstance(s, Print):
        # flush: a crash (os._exit) must not decide which prints reach the log
        return [f"{ind}print('p', {_expr(s.e)}, flush=True)"]
    if isinstance(s, Raise):
        return guarded([f"label.raise_to({s.label!r})"], s.catch, "r[0] = errcode(exc)")
    if isinstance(s, Send):
        name, kind, _ = next(c for c in CHANNELS if c[0] == s.channel)
        if kind == "http":
            call = (f"r[{s.dst}] = num(http.request('POST', URL[{name!r}] + 'v' + "
                    f"str(v), body=str(v))['status'])")
        else:
            call = (f"r[{s.dst}] = num(channels.send({name!r}, {{'to': 'obs@ni.test', "
                    f"'subject': 'v' + str(v), 'text': str(v)}})['sent'])")
        return guarded([f"v = {_expr(s.e)}", call], s.catch,
                       f"r[{s.dst}] = errcode(exc)")
    if isinstance(s, StreamPut):
        part = f"GEN + {'.' + s.part!r}"
        if s.label is None:  # the guest API, at the current label
            call = f"streams.put({STREAM!r}, {{'v': v}}, partition_key={part})"
        else:  # the guest API has no label argument; the monitor takes one (DESIGN §4)
            call = (f"_runtime.call('streams.put', {{'stream': {STREAM!r}, 'record': {{'v': v}}, "
                    f"'partition_key': {part}, 'label': {s.label!r}}})")
        # Only the label part of the sequence number: its count depends on earlier runs.
        return guarded([f"v = {_expr(s.e)}",
                        f"r[{s.dst}] = num({call}['sequence'].split('/', 1)[1])"],
                       s.catch, f"r[{s.dst}] = errcode(exc)")
    if isinstance(s, WfStart):
        name = "None" if s.name is None else f"GEN + {'.' + s.name!r}"
        return guarded([f"v = {_expr(s.e)}",
                        f"workflows.start({WORKFLOW!r}, name={name}, "
                        "input={'v': v, 'gen': GEN, 't': TW})",
                        f"r[{s.dst}] = 1"],
                       s.catch, f"r[{s.dst}] = errcode(exc)")
    if isinstance(s, Invoke):
        # The raw call names the callee under both keys: the guest API sends "name", the
        # monitor reads "function" (reported as a platform bug).
        call = (f"r[{s.dst}] = num(_runtime.call('functions.invoke', {{'function': {s.slot!r}, "
                f"'name': {s.slot!r}, 'event': {{'x': {_expr(s.e)}, 'gen': GEN}}}}))")
        on_error = f"r[{s.dst}] = errtext(exc)" if s.text else f"r[{s.dst}] = errcode(exc)"
        return guarded([call], s.catch, on_error)
    if isinstance(s, If):
        out = [f"{ind}if r[{s.reg}] % 2 == 0:"]
        out += _block(s.then, ind + "    ")
        out += [f"{ind}else:"] + _block(s.orelse, ind + "    ")
        return out
    if isinstance(s, Loop):
        return [f"{ind}for _ in range(r[{s.reg}] % 3):"] + _block(s.body, ind + "    ")
    raise TypeError(s)


def _block(stmts: tuple[Stmt, ...], ind: str) -> list[str]:
    lines = [ln for s in stmts for ln in _stmt(s, ind)]
    return lines or [ind + "pass"]


def _tail(a: InvokeAsync, ind: str) -> list[str]:
    call = (f"_runtime.call('functions.invoke_async', {{'function': {a.slot!r}, "
            f"'name': {a.slot!r}, 'event': {{'x': {_expr(a.e)}, 'gen': GEN}}, "
            f"'label': {a.label!r}}})")
    if not a.catch:
        return [ind + call]
    return [ind + "try:", ind + "    " + call, ind + "except Exception as exc:",
            ind + "    r[0] = errcode(exc)"]


def _end(t: Term, ind: str) -> list[str]:
    if isinstance(t, Return):
        return [f"{ind}return {_expr(t.e)}"]
    if isinstance(t, Fail):
        return [f"{ind}raise RuntimeError('fail ' + str({_expr(t.e)}))"]
    if isinstance(t, Spin):
        return [f"{ind}while True:", f"{ind}    pass"]
    return [f"{ind}os._exit(3)"]


def compile_program(p: Program, gen: str) -> str:
    """A complete handler module for `p` in run `gen` (stdlib + trapeze.guest only)."""
    tables = {t: table_name(gen, t) for t in TABLES}
    lines = [
        f"# Generated by tests/ni for run {gen}.",
        NILIB_SOURCE,
        "import os",
        "from trapeze.guest import _runtime, channels, http, kv, label, streams, workflows",
        f"GEN = {gen!r}",
        f"T = {tables!r}",
        f"TW = {table_name(gen, WF_TABLE)!r}",
        "URL = {'web_low': os.environ.get('NI_WEB', '') + 'low/',",
        "       'web_mida': os.environ.get('NI_WEB', '') + 'mida/'}",
        "",
        "",
        "def handler(event, context):",
        "    if event.get('gen') != GEN:",
        "        # A child that imported an older version of this file: the harness fails loudly.",
        "        print('STALE-MODULE', flush=True)",
        "        raise RuntimeError('STALE-MODULE')",
        "    r = [num(event.get('x')), 0, 0]",
    ]
    lines += _block(p.body, "    ")
    if p.tail is not None:
        lines += _tail(p.tail, "    ")
    lines += _end(p.end, "    ")
    return "\n".join(lines) + "\n"


# The stream consumer (fixed code, written once per world). One line per record, flushed, so
# that the lines a consumer at L printed do not depend on how records were batched.
CONSUMER_SOURCE = """\
def handler(event, context):
    for rec in event["Records"]:
        part = rec["partitionKey"].split(".", 1)[1]
        put_at = rec["sequenceNumber"].split("/", 1)[1]
        print("c", part, rec["data"]["v"], put_at, flush=True)
    return len(event["Records"])
"""


# The workflow's task (fixed code, written once per world). An odd value raises the
# execution to high (the label every later state runs at) and adds the secret read there, so
# the execution's status and output are data of its end label.
WF_TASK_SOURCE = NILIB_SOURCE + """
from trapeze.guest import kv, label


def handler(event, context):
    v = num(event["v"])
    print("w", v, flush=True)
    if v % 2:
        if label.current() not in ("high", "top"):
            label.raise_to("high")
        v = (v + num(kv.get(event["t"], "k0"))) % MOD
    return {"v": v, "bad": v % 3 == 0}
"""
WF_DEFINITION = json.dumps({"StartAt": "T", "States": {
    "T": {"Type": "Task", "Resource": WF_TASK, "Next": "C"},
    "C": {"Type": "Choice", "Default": "S",
          "Choices": [{"Variable": "$.bad", "BooleanEquals": True, "Next": "F"}]},
    "F": {"Type": "Fail", "Error": "Bad", "Cause": "a multiple of 3"},
    "S": {"Type": "Succeed"},
}})


def wf_task_line(value: int) -> str:
    """What the workflow's task prints (the interpreter predicts it)."""
    return f"w {value}"


def consumer_line(part: str, value: int, label: str) -> str:
    """What the consumer prints for one record (the interpreter predicts it)."""
    return f"c {part} {value} {label}"


# ----------------------------------------------------------------------------- rendering
def show_expr(e: Expr) -> str:
    if isinstance(e, Lit):
        return str(e.n)
    if isinstance(e, Reg):
        return f"r{e.i}"
    return f"({show_expr(e.a)} + {show_expr(e.b)})"


def show_stmts(stmts: tuple[Stmt, ...], ind: str = "  ") -> list[str]:
    out: list[str] = []
    for s in stmts:
        if isinstance(s, If):
            out.append(f"{ind}if r{s.reg} even:")
            out += show_stmts(s.then, ind + "  ") or [ind + "  skip"]
            if s.orelse:
                out.append(f"{ind}else:")
                out += show_stmts(s.orelse, ind + "  ")
        elif isinstance(s, Loop):
            out.append(f"{ind}repeat r{s.reg} % 3 times:")
            out += show_stmts(s.body, ind + "  ") or [ind + "  skip"]
        elif isinstance(s, Get):
            out.append(f"{ind}r{s.dst} := get {s.t}/{s.k}")
        elif isinstance(s, Put):
            out.append(f"{ind}put {s.t}/{s.k} := {show_expr(s.e)}")
        elif isinstance(s, Delete):
            out.append(f"{ind}delete {s.t}/{s.k}")
        elif isinstance(s, CondPut):
            out.append(f"{ind}r{s.dst} := put {s.t}/{s.k} := {show_expr(s.e)} "
                       f"if it is {s.expect}")
        elif isinstance(s, Scan):
            out.append(f"{ind}r{s.dst} := scan {s.t}")
        elif isinstance(s, Facets):
            out.append(f"{ind}r{s.dst} := facets {s.t}/{s.k}")
        elif isinstance(s, CurLabel):
            out.append(f"{ind}r{s.dst} := current label")
        elif isinstance(s, Print):
            out.append(f"{ind}print {show_expr(s.e)}")
        elif isinstance(s, Raise):
            out.append(f"{ind}raise_label {s.label}" + (" (catch)" if s.catch else ""))
        elif isinstance(s, Send):
            out.append(f"{ind}r{s.dst} := send {show_expr(s.e)} to {s.channel}"
                       + (" (catch)" if s.catch else ""))
        elif isinstance(s, StreamPut):
            out.append(f"{ind}r{s.dst} := stream put {show_expr(s.e)} to {s.part}"
                       + (f" at {s.label}" if s.label else "") + (" (catch)" if s.catch else ""))
        elif isinstance(s, WfStart):
            out.append(f"{ind}r{s.dst} := start {WORKFLOW}({show_expr(s.e)})"
                       + (f" named {s.name}" if s.name else "") + (" (catch)" if s.catch else ""))
        elif isinstance(s, Invoke):
            out.append(f"{ind}r{s.dst} := invoke {s.slot}({show_expr(s.e)})"
                       + (" (catch error text)" if s.text else " (catch)" if s.catch else ""))
    return out


def show_program(name: str, p: Program) -> list[str]:
    out = [f"{name}:"] + show_stmts(p.body)
    if p.tail is not None:
        a = p.tail
        out.append(f"  invoke_async {a.slot}({show_expr(a.e)}) at {a.label or 'current'}"
                   + (" (catch)" if a.catch else ""))
    end = p.end
    out.append("  " + (f"return {show_expr(end.e)}" if isinstance(end, Return)
                       else f"fail {show_expr(end.e)}" if isinstance(end, Fail)
                       else "loop forever" if isinstance(end, Spin) else "crash (os._exit)"))
    return out


def show_case(case: Case) -> str:
    used = {r.slot for r in case.requests}
    for slot in ENTRY:
        if slot in used:
            used |= {CALLEE, ASYNC}
    out = [f"observer: {case.observer}" + ("  (secret requests run concurrently)"
                                           if case.concurrent else "")]
    out.append("initial store (label: world A / world B):")
    for s in case.seed:
        b = s.value if flows(s.label, case.observer) else s.value_b
        out.append(f"  {s.t}/{s.k} @ {s.label}: {s.value} / {b}")
    if case.records:
        out.append(f"stream {STREAM} (label: world A / world B):")
        for rec in case.records:
            b = rec.value if flows(rec.label, case.observer) else rec.value_b
            out.append(f"  {rec.part} @ {rec.label}: {rec.value} / {b}")
    out.append("requests:")
    for r in case.requests:
        xb = r.x if flows(r.label, case.observer) else r.x_b
        out.append(f"  {r.slot} at {r.label}, x = {r.x} / {xb}")
    for slot in SLOTS:
        if slot in used:
            out += show_program(slot, case.programs[slot])
    return "\n".join(out)


# ----------------------------------------------------------------------------- generator
# The biases below are what lets random search reach the leak shapes of the mutation
# catalogue (docs/noninterference.md, "Mutations"), after Hritcu et al.'s lesson that
# uniform generation rarely builds a secret-dependent observable effect: secrets must exist
# (seeds above the observer, requests above it), be read (raise high, then read into r0),
# survive (few uncaught errors, r0 not overwritten by results that carry nothing) and reach
# something the observer sees (returns, sends, stream puts, async work, deletes).
values = st.integers(0, 9)
# r0 starts as the event's value, which differs between the worlds for secret requests:
# reading it more often makes secret-dependent behaviour (and so any leak) more likely.
src_regs = st.sampled_from([0, 0, 1, 2])
# Reads mostly land in r0 (what outputs read most); results that carry little (a label, a
# count, a receipt) mostly land elsewhere, so that they do not overwrite a secret in r0.
read_dst = st.sampled_from([0, 0, 0, 1, 2])
other_dst = st.sampled_from([1, 2, 2, 0])
# Mostly caught errors: an uncaught one ends the program, and what follows never runs.
catches = st.sampled_from([True] * 9 + [False])
# Error-text probes are rarer: the interpreter cannot predict texts, so a case with one
# skips the differential test.
text_probes = st.sampled_from([False, False, False, True])
# t0/k0 more often, in seeds and reads alike: a read then hits a seeded secret often.
tables = st.sampled_from(("t0", "t0", "t1"))
keys = st.sampled_from(("k0", "k0", "k1", "k2"))
all_tables = st.sampled_from(TABLES)
all_keys = st.sampled_from(KEYS)
# p0 first and more often: two puts share a partition more often (stream order, batches).
partitions = st.sampled_from(("p0", "p0", "p1"))
labels = st.sampled_from(LABELS)
# Raise targets: mostly high or top (always allowed, above nearly every observer, so what
# follows reads secrets), sometimes any label (a lower one must be refused).
raise_targets = st.sampled_from(("high", "high", "top", *LABELS))
exprs: st.SearchStrategy[Expr] = st.one_of(
    st.builds(Lit, values),
    st.builds(Reg, src_regs),
    st.builds(Plus, st.builds(Reg, src_regs), st.builds(Lit, values)),
)
# What leaves an invocation most directly: r0 itself, most of the time.
out_exprs: st.SearchStrategy[Expr] = st.one_of(st.just(Reg(0)), st.just(Reg(0)), exprs)


def _store_ops() -> list[st.SearchStrategy[Any]]:
    return [
        st.builds(Get, tables, keys, read_dst),
        st.builds(Get, tables, keys, read_dst),
        # Writes anywhere: on t0/k0 they would often overwrite its secret before it is read.
        st.builds(Put, all_tables, all_keys, exprs),
        st.builds(Put, all_tables, all_keys, exprs),
        st.builds(Delete, tables, keys),
        st.builds(Delete, tables, keys),
        st.builds(CondPut, tables, keys, exprs, st.one_of(st.none(), values), other_dst),
        st.builds(Scan, tables, other_dst),
        st.builds(Facets, tables, keys, other_dst),
    ]


def _outputs() -> list[st.SearchStrategy[Any]]:
    return [
        st.builds(Send, st.sampled_from([c[0] for c in CHANNELS]), out_exprs, other_dst,
                  catches),
        st.builds(Send, st.sampled_from([c[0] for c in CHANNELS]), out_exprs, other_dst,
                  catches),
        st.builds(StreamPut, partitions, out_exprs, st.one_of(st.none(), st.none(), labels),
                  other_dst, catches),
        st.builds(Print, out_exprs),
        st.builds(CurLabel, other_dst),
        st.builds(WfStart, out_exprs, st.sampled_from((None, None, *WF_NAMES)), other_dst,
                  catches),
    ]


def _raises() -> list[st.SearchStrategy[Any]]:
    return [st.builds(Raise, raise_targets, catches)]


# Raise, then read into r0: the start of every "read a secret after a raise" leak. Mostly to
# top (above every observer, sees every secret) and from t0/k0 (where seeds put a secret).
raise_read = st.tuples(
    st.builds(Raise, st.sampled_from(("top", "top", "top", "high", *LABELS)), st.just(True)),
    st.one_of(st.just(Get("t0", "k0", 0)), st.just(Get("t0", "k0", 0)),
              st.builds(Get, tables, keys, st.just(0))))
# ... and what may follow it: r0 leaves on a channel, a stream, the log, or decides a delete.
_secret_delete = st.builds(If, st.just(0), st.sampled_from(
    (Delete("t0", "k0"), Delete("t0", "k0"), Delete("t0", "k1"))).map(lambda d: (d,)),
    st.just(()))
# (Their results go to r1/r2: r0 must still hold the secret for the next step.)
_keep_r0 = st.sampled_from((1, 2))
leak_steps = st.one_of(
    st.builds(Send, st.sampled_from([c[0] for c in CHANNELS]), st.just(Reg(0)), _keep_r0,
              st.just(True)),
    st.builds(StreamPut, partitions, st.just(Reg(0)), st.none(), _keep_r0, st.just(True)),
    # a record at a named label: refused below the (raised) current label
    st.builds(StreamPut, partitions, st.just(Reg(0)), labels, _keep_r0, st.just(True)),
    st.builds(Print, st.just(Reg(0))),
    # an execution started at the (raised) current label, unnamed or named
    st.builds(WfStart, st.just(Reg(0)), st.sampled_from((None, *WF_NAMES)), _keep_r0,
              st.just(True)),
    _secret_delete,
    _secret_delete,
)


def _stmts(base: list[st.SearchStrategy[Any]], depth: int, max_size: int, *,
           raises: bool) -> st.SearchStrategy[tuple[Any, ...]]:
    leaf = st.one_of(*base).map(lambda s: (s,))
    chunks: list[st.SearchStrategy[tuple[Any, ...]]] = [leaf, leaf, leaf]
    if raises:
        chunks.append(raise_read)
    if depth > 0:
        inner = _stmts(base, depth - 1, 3, raises=raises)
        # A one-armed branch on the event's value around one store operation or output: the
        # smallest secret-dependent effect, the pattern most leaks need.
        secret_branch = st.builds(If, st.just(0), st.lists(st.one_of(*base), min_size=1,
                                                           max_size=2).map(tuple), st.just(()))
        compound = st.one_of(
            st.builds(If, src_regs, inner, inner),
            st.builds(Loop, src_regs, inner),
            secret_branch,
        )
        chunks.append(compound.map(lambda s: (s,)))
    return st.lists(st.one_of(*chunks), max_size=max_size).map(
        lambda cs: tuple(s for c in cs for s in c))


terms = st.one_of(
    st.builds(Return, out_exprs), st.builds(Return, out_exprs), st.builds(Return, out_exprs),
    st.builds(Fail, exprs), st.just(Spin()), st.just(Crash()),
)
# Entry programs spin rarely: their timeout is the longest.
entry_terms = st.one_of(
    st.builds(Return, out_exprs), st.builds(Return, out_exprs), st.builds(Return, out_exprs),
    st.builds(Return, out_exprs), st.builds(Fail, exprs), st.builds(Fail, exprs),
    st.just(Crash()), st.just(Crash()), st.just(Spin()),
)


@st.composite
def entry_programs(draw: st.DrawFn) -> Program:
    invokes = st.builds(Invoke, st.just(CALLEE), exprs, other_dst, catches, text_probes)
    # Half of the entries end in the leak shape below, after a short random prefix (a long
    # one would often die first, or overwrite the secret it is about to read); the others
    # are random throughout.
    leaky = draw(st.booleans())
    depth, size = (1, 2) if leaky else (2, 6)
    body_l = list(draw(_stmts(_store_ops() + _outputs() + _raises(), depth, size, raises=True)))
    # Splice at most two synchronous invokes into the top level (never inside a loop).
    for _ in range(draw(st.integers(0, 1 if leaky else 2))):
        body_l.insert(draw(st.integers(0, len(body_l))), draw(invokes))
    tails = [
        st.none(),
        st.builds(InvokeAsync, st.just(ASYNC), exprs, st.one_of(st.none(), labels),
                  catches),
        st.builds(InvokeAsync, st.just(ASYNC), out_exprs, st.none(), catches),
    ]
    if leaky:  # hand r0 to async work "at the current label", after the raise below
        tails.append(st.just(InvokeAsync(ASYNC, Reg(0), None, True)))
    tail = draw(st.one_of(*tails))
    end = draw(entry_terms)
    if leaky:
        # Raise, read, then let r0 out (to a channel, a stream, the log, a delete, async
        # work, the reply): the shape of every leak after a raise, ending in a return of r0
        # most of the time, since the reply is an output too. Or raise to any label and let
        # r0 (the event, secret in a secret request) out at once: a raise that went down.
        start = draw(st.one_of(raise_read, raise_read, raise_read,
                               st.builds(Raise, labels, st.just(True)).map(lambda r: (r,))))
        body_l += [*start, *draw(st.lists(leak_steps, min_size=1, max_size=2))]
        end = draw(st.sampled_from((Return(Reg(0)), Return(Reg(0)), Fail(Reg(0)), end)))
    return Program(tuple(body_l), tail, end)


@st.composite
def callee_programs(draw: st.DrawFn) -> Program:
    # No raise before the last statements: after a raise the caller runs on concurrently.
    pre = draw(_stmts(_store_ops() + _outputs(), 1, 4, raises=False))
    post: tuple[Any, ...] = ()
    if draw(st.booleans()):
        reads = [st.builds(Get, tables, keys, read_dst), st.builds(CurLabel, other_dst),
                 st.builds(Facets, tables, keys, other_dst)]
        raise_ = draw(st.builds(Raise, raise_targets, catches))
        post = (raise_, *draw(st.lists(st.one_of(*reads), max_size=2)))
    return Program(pre + post, None, draw(terms))


@st.composite
def async_programs(draw: st.DrawFn) -> Program:
    # It prints first, so that the label each async run gets is visible in the logs.
    body = (Print(Reg(0)), *draw(_stmts(_store_ops() + _outputs() + _raises(), 1, 5,
                                        raises=True)))
    return Program(body, None, draw(terms))


@st.composite
def seeds(draw: st.DrawFn, observer: str) -> tuple[SeedPut, ...]:
    """Keys with a public facet (⊑ observer), a secret one (not ⊑ observer, different in
    world B), both, or one at any label; t0/k0 first, always with both. Public facets are put
    before secret ones: a public write after a secret one on the same key would remove the
    secret (the write rule), while a secret write at s never removes a public facet at p
    (that needs s ⊑ p, and p ⊑ observer, but s is not ⊑ observer)."""
    public = st.sampled_from([lab for lab in LABELS if flows(lab, observer)])
    secret = st.sampled_from([lab for lab in LABELS if not flows(lab, observer)])
    out: list[SeedPut] = []
    for i in range(draw(st.integers(1, 4))):
        t, k = ("t0", "k0") if i == 0 else (draw(tables), draw(keys))
        kinds = ("both",) if i == 0 else ("both", "both", "public", "secret", "any")
        kind = draw(st.sampled_from(kinds))
        if kind in ("both", "public"):
            v = draw(values)
            out.append(SeedPut(t, k, draw(public), v, v))
        if kind in ("both", "secret"):
            out.append(SeedPut(t, k, *draw(secret_values(secret))))
        if kind == "any":
            out.append(SeedPut(t, k, draw(labels), draw(values), draw(values)))
    return tuple(sorted(out, key=lambda p: not flows(p.label, observer)))  # stable


def secret_values(label: st.SearchStrategy[str]) -> st.SearchStrategy[tuple[str, int, int]]:
    """A label above the observer and two values that always differ, in parity too: a secret
    equal in both worlds tests nothing, and branches test parity."""
    return st.tuples(label, values, st.sampled_from((1, 3, 5, 7, 9))).map(
        lambda t: (t[0], t[1], (t[1] + t[2]) % 10))


@st.composite
def cases(draw: st.DrawFn, *, concurrent: bool | None = None) -> Case:
    # Low observers have more above them to keep secret.
    observer = draw(st.sampled_from(("low", "bottom", "low", "mid:a", "high")))
    public = st.sampled_from([lab for lab in LABELS if flows(lab, observer)])
    secret = st.sampled_from([lab for lab in LABELS if not flows(lab, observer)])
    programs = {
        "f0": draw(entry_programs()),
        "f1": draw(entry_programs()),
        "f2": draw(callee_programs()),
        "f3": draw(async_programs()),
    }
    seed = draw(seeds(observer))
    # Requests the observer sees (their replies can leak) and requests it does not (their
    # events are secrets), about half each.
    slots = st.sampled_from(("f0", "f0", "f0", "f1", "f1", "f2", "f3"))
    requests = st.one_of(
        st.builds(Request, slots, public, values, values),
        st.builds(lambda slot, t: Request(slot, *t), slots, secret_values(secret)),
    )
    reqs = tuple(draw(st.lists(requests, min_size=1, max_size=4)))
    conc = draw(st.booleans()) if concurrent is None else concurrent
    records = tuple(draw(st.lists(st.one_of(
        st.builds(SeedRecord, partitions, public, values, values),
        st.builds(lambda part, t: SeedRecord(part, *t), partitions, secret_values(secret)),
    ), max_size=3)))
    return Case(programs, seed, reqs, observer, conc, records)
