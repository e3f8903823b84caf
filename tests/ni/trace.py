"""What a run produces, and what of it an observer at label l may see.

A `Trace` is recorded in the same shape from the real platform (harness) and from the
reference interpreter. Everything in it is already normalised: request ids, timestamps and
sequence numbers are dropped (they differ between worlds without being secret), and each
request's window holds what happened between its start and the platform's quiescence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ni.lang import CHANNEL_BOUND, CONSUMER, LABELS, Case, Request, SeedPut, SeedRecord, flows
from trapeze.runtime.invoker import WITHHELD_MESSAGE

# (function, label, text); (kind, function, label[, detail]); (channel, subject/path, body)
Log = tuple[str, str, str]
Audit = tuple[Any, ...]
Output = tuple[str, str, str]
# A stream record: (partition, label, n, value), n its sequence number among this run's
# records at that label (1, 2, ...): the platform's count goes on across runs.
Record = tuple[str, str, int, Any]
# (name, start label, status, output value, label) of a workflow execution: as the platform
# lists it to a viewer, the label it is at, or its start label while that is hidden
Execution = tuple[str, str, str, Any, str]


@dataclass
class Window:
    outputs: list[Output] = field(default_factory=list)
    logs: list[Log] = field(default_factory=list)
    audit: list[Audit] = field(default_factory=list)


@dataclass
class Trace:
    # (request label, status, value, error) per request, in request order
    responses: list[tuple[str, str, Any, str]] = field(default_factory=list)
    # what happened while the initial state was put in (stream consumers of seeded records)
    setup: Window = field(default_factory=Window)
    windows: list[Window] = field(default_factory=list)
    # this run's stream records, all labels, in the order they were put
    stream: list[Record] = field(default_factory=list)
    # this run's workflow executions, all labels, in the order they were started
    workflows: list[Execution] = field(default_factory=list)
    # (table, key) -> [(label, value, is_tombstone)] newest first (the whole store)
    raw: dict[tuple[str, str], list[tuple[str, Any, bool]]] = field(default_factory=dict)
    # observer label -> its view of the store and the stream (filled by the harness only)
    views: dict[str, Any] = field(default_factory=dict)


def seed_value(case: Case, s: SeedPut, world: str) -> int:
    """World B differs from A only in facets above the observer."""
    return s.value if world == "A" or flows(s.label, case.observer) else s.value_b


def record_value(case: Case, r: SeedRecord, world: str) -> int:
    """Seeded stream records, like seeded facets, differ only above the observer."""
    return r.value if world == "A" or flows(r.label, case.observer) else r.value_b


def request_event_x(case: Case, r: Request, world: str) -> int:
    """Requests from above the observer may carry different data in the two worlds."""
    return r.x if world == "A" or flows(r.label, case.observer) else r.x_b


def _sorted(items: list[Any]) -> list[Any]:
    # Within one window, async work and detached continuations interleave freely, so a
    # window is compared as a multiset.
    return sorted(items, key=repr)


def _log_entries(logs: list[Log]) -> list[Log]:
    # The stream consumer's log holds one line per record of its batch; how records are
    # batched depends on timing, so its lines are compared one by one.
    out: list[Log] = []
    for function, label, text in logs:
        if function == CONSUMER:
            out += [(function, label, line) for line in text.split("\n") if line]
        else:
            out.append((function, label, text))
    return out


def project(trace: Trace, case: Case, l: str,  # noqa: E741 - the paper's name
            *, detail: bool = True) -> dict[str, Any]:
    """The observations at `l` (DESIGN §2): replies to requests at labels ⊑ l, channel
    outputs with bounds ⊑ l, logs and audit entries at labels ⊑ l, the store's
    l-projection, and the stream records at labels ⊑ l."""
    responses = [
        (i, status, value, error if detail else error_kind(error))
        for i, (label, status, value, error) in enumerate(trace.responses)
        if flows(label, l)
    ]
    windows = []
    for w in [trace.setup, *trace.windows]:  # windows[0] is the setup window
        windows.append({
            "outputs": _sorted([o for o in w.outputs if flows(CHANNEL_BOUND[o[0]], l)]),
            "logs": _sorted([g if detail else (g[0], g[1], log_summary(g[2]))
                             for g in _log_entries(w.logs) if flows(g[1], l)]),
            "audit": _sorted([a if detail else a[:3] for a in w.audit if flows(a[2], l)]),
        })
    view = trace.views.get(l)
    if view is None:  # derive the l-view from the raw facets and records (interpreter traces)
        store = view_from_raw(trace.raw, l)
        stream = [r for r in trace.stream if flows(r[1], l)]
        # Listed when its start label flows to l; its outcome only when its end label does
        # too, otherwise it reads as running at its start label.
        workflows = [e if flows(e[4], l) else (e[0], e[1], "RUNNING", None, e[1])
                     for e in trace.workflows if flows(e[1], l)]
    else:
        store = {k: view[k] for k in ("get", "facets", "scan")}
        stream = view["stream"]
        workflows = view["workflows"]
    return {"responses": responses, "windows": windows, "store": store, "stream": stream,
            "workflows": workflows}


_KIND = re.compile(r"([A-Za-z_][A-Za-z0-9_]*): ")


def error_kind(error: str | None) -> str:
    """The class of an error text: what the interpreter predicts (the design fixes statuses
    and exception classes, not message wording). The withheld reply is the exception: the
    design fixes it whole ("a fixed withheld reply", §6), so only the platform's one fixed
    text counts as withheld; anything added to it is a difference."""
    if not error:
        return ""
    if error == WITHHELD_MESSAGE:
        return "withheld"
    if error in ("withheld", "timeout", "crash"):
        return error
    if error.startswith("timed out"):
        return "timeout"
    if error.startswith("the function's process"):
        return "crash"
    m = _KIND.match(error)
    return m.group(1) if m else error


def log_summary(text: str) -> str:
    """A log reduced to what the interpreter predicts: the program's prints and the
    runtime's one-line failure note, with the error reduced to its class."""
    out = []
    for line in text.split("\n"):
        if line.startswith("p "):
            out.append(line)
        elif line.startswith(("c ", "w ")):  # a stream consumer's or workflow task's line
            out.append(line)
        elif line.startswith("[trapeze] "):
            status, _, err = line[len("[trapeze] "):].partition(": ")
            out.append(f"[trapeze] {status}: {error_kind(err)}")
    return "\n".join(out)


def view_from_raw(raw: dict[tuple[str, str], list[tuple[str, Any, bool]]],
                  l: str,  # noqa: E741 - the paper's name
                  ) -> dict[str, Any]:
    gets, facets = {}, {}
    scans: dict[str, list[tuple[str, Any]]] = {}
    for (t, k), fs in sorted(raw.items()):
        visible = [f for f in fs if flows(f[0], l)]
        newest = visible[0] if visible else None
        value = None if newest is None or newest[2] else newest[1]
        gets[(t, k)] = value
        facets[(t, k)] = [(v, lab) for lab, v, tomb in visible if not tomb]
        if value is not None:
            scans.setdefault(t, []).append((k, value))
    return {"get": gets, "facets": facets, "scan": scans}


def first_difference(a: dict[str, Any], b: dict[str, Any]) -> str:
    """A short human description of where two projections differ."""
    for part in ("responses", "store", "stream", "workflows"):
        if a[part] != b[part]:
            return f"{part}:\n  A: {a[part]}\n  B: {b[part]}"
    for i, (wa, wb) in enumerate(zip(a["windows"], b["windows"], strict=True)):
        for part in ("outputs", "logs", "audit"):
            if wa[part] != wb[part]:
                where = "setup" if i == 0 else f"request #{i - 1}"
                return f"{where} {part}:\n  A: {wa[part]}\n  B: {wb[part]}"
    return "no difference"


assert set(CHANNEL_BOUND.values()) <= set(LABELS)
