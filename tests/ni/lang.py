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
"""

from __future__ import annotations

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
TIMEOUTS = {"f0": 2.0, "f1": 2.0, "f2": 0.5, "f3": 0.5}
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
class If:
    reg: int
    then: tuple[Stmt, ...]
    orelse: tuple[Stmt, ...]


@dataclass(frozen=True)
class Loop:
    reg: int  # runs num(reg) % 3 times
    body: tuple[Stmt, ...]


Stmt = (Get | Put | Delete | CondPut | Scan | Facets | CurLabel | Print | Raise | Send
        | Invoke | If | Loop)


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


@dataclass(frozen=True)
class Case:
    programs: dict[str, Program] = field(hash=False)
    seed: tuple[SeedPut, ...]
    requests: tuple[Request, ...]
    observer: str
    concurrent: bool


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
        "from trapeze.guest import _runtime, channels, http, kv, label",
        f"GEN = {gen!r}",
        f"T = {tables!r}",
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
    out.append("requests:")
    for r in case.requests:
        xb = r.x if flows(r.label, case.observer) else r.x_b
        out.append(f"  {r.slot} at {r.label}, x = {r.x} / {xb}")
    for slot in SLOTS:
        if slot in used:
            out += show_program(slot, case.programs[slot])
    return "\n".join(out)


# ----------------------------------------------------------------------------- generator
values = st.integers(0, 9)
regs = st.integers(0, NREGS - 1)
# r0 starts as the event's value, which differs between the worlds for secret requests:
# reading it more often makes secret-dependent behaviour (and so any leak) more likely.
src_regs = st.sampled_from([0, 0, 1, 2])
# Mostly caught errors: an uncaught one ends the program, and what follows never runs.
catches = st.sampled_from([True, True, True, False])
tables = st.sampled_from(TABLES)
keys = st.sampled_from(KEYS)
labels = st.sampled_from(LABELS)
exprs: st.SearchStrategy[Expr] = st.one_of(
    st.builds(Lit, values),
    st.builds(Reg, src_regs),
    st.builds(Plus, st.builds(Reg, src_regs), st.builds(Lit, values)),
)


def _store_ops() -> list[st.SearchStrategy[Any]]:
    return [
        st.builds(Get, tables, keys, regs),
        st.builds(Get, tables, keys, regs),
        st.builds(Put, tables, keys, exprs),
        st.builds(Put, tables, keys, exprs),
        st.builds(Delete, tables, keys),
        st.builds(Delete, tables, keys),
        st.builds(CondPut, tables, keys, exprs, st.one_of(st.none(), values), regs),
        st.builds(Scan, tables, regs),
        st.builds(Facets, tables, keys, regs),
    ]


def _effects() -> list[st.SearchStrategy[Any]]:
    return [
        st.builds(Raise, labels, catches),
        st.builds(Raise, labels, catches),
        st.builds(Send, st.sampled_from([c[0] for c in CHANNELS]), exprs, regs, catches),
        st.builds(Send, st.sampled_from([c[0] for c in CHANNELS]), exprs, regs, catches),
        st.builds(Print, exprs),
        st.builds(CurLabel, regs),
    ]


def _stmts(base: list[st.SearchStrategy[Any]], depth: int, max_size: int
           ) -> st.SearchStrategy[tuple[Any, ...]]:
    leaf = st.one_of(*base)
    if depth == 0:
        return st.lists(leaf, max_size=max_size).map(tuple)
    inner = _stmts(base, depth - 1, 3)
    # A one-armed branch on the event's value around one store operation: the smallest
    # secret-dependent effect, the pattern most leaks need (Hritcu et al.'s "smart" bias).
    secret_branch = st.builds(If, st.just(0), st.lists(st.one_of(*_store_ops()), min_size=1,
                                                       max_size=2).map(tuple), st.just(()))
    compound = st.one_of(
        st.builds(If, src_regs, inner, inner),
        st.builds(Loop, src_regs, inner),
        secret_branch,
    )
    return st.lists(st.one_of(leaf, leaf, leaf, compound), max_size=max_size).map(tuple)


terms = st.one_of(
    st.builds(Return, exprs), st.builds(Return, exprs), st.builds(Return, exprs),
    st.builds(Fail, exprs), st.just(Spin()), st.just(Crash()),
)
# Entry programs spin rarely: their timeout is the longest.
entry_terms = st.one_of(
    st.builds(Return, exprs), st.builds(Return, exprs), st.builds(Return, exprs),
    st.builds(Return, exprs), st.builds(Fail, exprs), st.builds(Fail, exprs),
    st.just(Crash()), st.just(Spin()),
)


@st.composite
def entry_programs(draw: st.DrawFn) -> Program:
    invokes = st.builds(Invoke, st.just(CALLEE), exprs, regs, catches, st.booleans())
    body = draw(_stmts(_store_ops() + _effects(), 2, 6))
    # Splice at most two synchronous invokes into the top level (never inside a loop).
    body_l = list(body)
    for _ in range(draw(st.integers(0, 2))):
        body_l.insert(draw(st.integers(0, len(body_l))), draw(invokes))
    tail = draw(st.one_of(
        st.none(), st.none(),
        st.builds(InvokeAsync, st.just(ASYNC), exprs, st.one_of(st.none(), labels),
                  catches),
        st.builds(InvokeAsync, st.just(ASYNC), exprs, st.none(), catches),
    ))
    if tail is not None and draw(st.booleans()):
        # Raise, read, then hand off: the shape of work started after a raise.
        body_l += [draw(st.builds(Raise, labels, st.just(True))),
                   draw(st.builds(Get, tables, keys, st.just(0)))]
    return Program(tuple(body_l), tail, draw(entry_terms))


@st.composite
def callee_programs(draw: st.DrawFn) -> Program:
    pre = draw(_stmts(_store_ops() + _effects()[2:], 1, 4))  # no raise before the last one
    post: tuple[Any, ...] = ()
    if draw(st.booleans()):
        reads = [st.builds(Get, tables, keys, regs), st.builds(CurLabel, regs),
                 st.builds(Facets, tables, keys, regs)]
        raise_ = draw(st.builds(Raise, labels, catches))
        post = (raise_, *draw(st.lists(st.one_of(*reads), max_size=2)))
    return Program(pre + post, None, draw(terms))


@st.composite
def async_programs(draw: st.DrawFn) -> Program:
    # It prints first, so that the label each async run gets is visible in the logs.
    body = (Print(Reg(0)), *draw(_stmts(_store_ops() + _effects(), 1, 5)))
    return Program(body, None, draw(terms))


seed_puts = st.builds(SeedPut, tables, keys, labels, values, values)
requests = st.builds(
    Request,
    st.sampled_from(("f0", "f0", "f0", "f1", "f1", "f2", "f3")),
    labels, values, values,
)


@st.composite
def cases(draw: st.DrawFn, *, concurrent: bool | None = None) -> Case:
    programs = {
        "f0": draw(entry_programs()),
        "f1": draw(entry_programs()),
        "f2": draw(callee_programs()),
        "f3": draw(async_programs()),
    }
    seed = tuple(draw(st.lists(seed_puts, min_size=1, max_size=8)))
    reqs = tuple(draw(st.lists(requests, min_size=1, max_size=4)))
    # Low observers have more above them to keep secret.
    observer = draw(st.sampled_from(("bottom", "low", "low", "mid:a", "high")))
    conc = draw(st.booleans()) if concurrent is None else concurrent
    return Case(programs, seed, reqs, observer, conc)
