"""Review: error paths and exception text (what a failure tells an observer below the data).

Each test runs two worlds that differ only in data or events above an observer label and
compares what the observer sees (review, session 7). Tests marked FINDING failed on the code
they were written against (that failure was the evidence) and pass since the fix named in
each; tests marked SOUND pin down behaviour that was checked and found right.
Fixes: W1 WorkflowEngine._output; P1 PostgresFacetedStore._load_labels on the held connection
and labels interned before a write takes one; A1 Monitor.declassify records the reason at
max_label only; D1 invoker._callee_margin_s; P2 values.MAX_NAME_BYTES.

FINDING W1 (workflows). A Task's ResultSelector / ResultPath / OutputPath are applied to the
task's result, which is data at the label the task *ended* at. When one of them fails
(``PathError``: a path that matches nothing in the result), ``_run_frame`` records the failure
(``States.Runtime``) at the label the step *started* at, so an observer at the start label sees
the execution FAILED where it would otherwise see it RUNNING (its label having risen): one bit
of the high result per execution, chosen by the high code (it need only leave out a field).
The same holds for a Parallel's ResultSelector over the branch outputs (at their join), and
after a callback task, where the output reaches the selector only if the notification, run
above the token's label, succeeded.

FINDING P1 (PostgreSQL store). A write holds its pooled connection while it reloads the label
snapshot (a facet of the key carries a label another process interned) or interns a label,
and both take a *second* connection from the same pool. When the pool has no second one
(``pool_max=1``, or every connection held by writers in the same situation) the write waits
for the pool timeout and fails with ``StoreUnavailableError``, which the guest sees as
"internal error"; without the higher facet the same write succeeds. So whether a low write
fails depends on whether a higher facet with a new label exists on its key. SQLite (a
connection per thread) does not have this.

FINDING A1 (audit). A declassifier that refuses (raises) is audited at the invocation's label
with the exception's class name, though the declassifier computed it from data up to its
max_label: a viewer at the invocation's label learns more than the declared refusal.

FINDING D1 (synchronous invoke under a response declassifier). The callee's deadline is the
caller's, so a callee that runs on to its deadline after raising (decided on data above the
caller) ends the caller too: the caller times out instead of getting what the declassifier
decides for a timeout, which the declassifier was meant to decide for every outcome.

FINDING P2 (a backend difference, not a flow). A key the store's validation admits can be too
large for PostgreSQL's index: "internal error" there, accepted by SQLite.

SOUND S1. Store replies and error texts at public (reads, limits, pagination, conditional
writes, malformed calls, the reply-size limit) do not depend on facets above, on either
backend, also when those facets carry labels the reader's snapshot has never seen.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from declassified_callee import write_callee_app
from trapeze.labels import Lattice
from trapeze.policy.specs import WorkflowSpec
from trapeze.runtime.workflows import WorkflowEngine

SCALE = 0.01
_ENGINES: list[WorkflowEngine] = []


@pytest.fixture(autouse=True)
def _stop_engines() -> Any:
    yield
    while _ENGINES:
        _ENGINES.pop().stop(5)


def _engine(db: Any, lattice: Lattice, invoke: Any, functions: set[str],
            docs: dict[str, Any]) -> WorkflowEngine:
    specs = {n: WorkflowSpec(n, Path(f"/{n}.json"), (), d) for n, d in docs.items()}
    eng = WorkflowEngine(db, lattice, specs, invoke, functions=functions, time_scale=SCALE)
    _ENGINES.append(eng)
    return eng


def _public_projection(eng: WorkflowEngine, arn: str) -> dict[str, Any]:
    """What a viewer at public sees of one execution, minus ids and times (which differ in
    any two runs): its status, label, output, error, cause and the types and fields of the
    history events it is shown."""
    d = eng.describe(arn, "public")
    events = [(e["type"], e.get("state"), e.get("label"), e.get("detail"))
              for e in d["history"]]
    return {k: d[k] for k in ("status", "label", "output", "error", "cause")} | {
        "history": events}


# ------------------------------------------------------------------------------ FINDING W1
# The task raises to alice (decided at public: it always does), reads alice's secret, and
# returns a result whose shape depends on it. ResultSelector picks a field of the result.
SELECTOR = {"StartAt": "Peek", "States": {
    "Peek": {"Type": "Task", "Resource": "peek", "ResultSelector": {"v.$": "$.field"},
             "End": True}}}
OUTPUT_PATH = {"StartAt": "Peek", "States": {
    "Peek": {"Type": "Task", "Resource": "peek", "OutputPath": "$.field", "End": True}}}
PARALLEL = {"StartAt": "Fan", "States": {"Fan": {
    "Type": "Parallel", "ResultSelector": {"v.$": "$[0].field"}, "End": True,
    "Branches": [{"StartAt": "Peek", "States": {"Peek": {"Type": "Task", "Resource": "peek",
                                                          "End": True}}}]}}}


def _run_world(db: Any, lattice: Lattice, fake: Any, doc: dict[str, Any], name: str,
               secret_has_field: bool) -> dict[str, Any]:
    def peek(event: Any, ctx: Any) -> Any:
        ctx.raise_to("alice")  # unconditional: public knows this much
        # Above public now: what it returns depends on alice's data.
        return {"field": 1} if secret_has_field else {"other": 1}

    eng = _engine(db, lattice, fake({"peek": peek}), {"peek"}, {"wf": doc})
    arn = eng.start("wf", name, {}, "public")["executionArn"]
    assert eng.wait(arn, 20)
    time.sleep(0.05)
    return _public_projection(eng, arn)


@pytest.mark.parametrize("doc", [SELECTOR, OUTPUT_PATH, PARALLEL],
                         ids=["result-selector", "output-path", "parallel-selector"])
def test_w1_a_path_error_on_a_raised_result_is_not_recorded_at_the_start_label(
        db: Any, lattice: Lattice, fake: Any, doc: dict[str, Any]) -> None:
    """FINDING W1. Two executions started at public whose task raises to alice and returns a
    result with or without the field the state's ResultSelector/OutputPath names (alice's
    secret decides which). Public must see the same in both: the execution went above it.
    Before the fix the one without the field is FAILED at public (States.Runtime,
    with a StateFailed event at public), the other RUNNING at public."""
    with_field = _run_world(db, lattice, fake, doc, "a", True)
    without_field = _run_world(db, lattice, fake, doc, "b", False)
    assert with_field["status"] == "RUNNING"  # at public: it ended above
    assert without_field == with_field, (
        "public sees whether alice's task result had the field:\n"
        f"  with:    {with_field}\n  without: {without_field}")


# The same misattribution after a callback task: the notification runs (and may raise) above
# the token's label, and only when it *succeeded* does the completion's output reach the
# ResultSelector. So a completer at public who sends an output without the field learns,
# from a FAILED at public, that the notification succeeded above it.
CALLBACK = {"StartAt": "Ask", "States": {
    "Ask": {"Type": "Task", "Resource": "notify.waitForTaskToken", "TimeoutSeconds": 1000,
            "ResultSelector": {"v.$": "$.field"}, "End": True}}}


def _callback_world(db: Any, lattice: Lattice, fake: Any, name: str,
                    notification_fails: bool) -> dict[str, Any]:
    tokens: list[str] = []

    def notify(event: Any, ctx: Any) -> Any:
        tokens.append(event["TaskToken"])
        ctx.raise_to("alice")
        if notification_fails:  # alice's data decides
            raise RuntimeError("the notification failed above public")
        return "sent"

    eng = _engine(db, lattice, fake({"notify": notify}), {"notify"}, {"wf": CALLBACK})
    arn = eng.start("wf", name, {}, "public")["executionArn"]
    deadline = time.monotonic() + 10
    while not tokens and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # the notification has returned; the token waits
    # The completer at public (the token's label) sends an output without the field.
    assert eng.complete_task(tokens[0], {"other": 1}, caller_label="public") == {
        "completed": True}
    assert eng.wait(arn, 20)
    time.sleep(0.05)
    return _public_projection(eng, arn)


def test_w1_after_a_callback_public_does_not_learn_whether_the_notification_succeeded(
        db: Any, lattice: Lattice, fake: Any) -> None:
    """FINDING W1 (callback variant). The notification of a waitForTaskToken task raises to
    alice and then succeeds or fails on alice's data; a completer at public completes the
    token with an output the ResultSelector cannot use. Public must see the same in both
    worlds; before the fix it saw FAILED (States.Runtime, at public) exactly when the
    notification succeeded above it."""
    succeeded = _callback_world(db, lattice, fake, "s", False)
    failed = _callback_world(db, lattice, fake, "f", True)
    assert failed["status"] == "RUNNING"  # the failure was above public
    assert succeeded == failed, (
        "public learns how alice's notification ended:\n"
        f"  succeeded: {succeeded}\n  failed:    {failed}")


# ------------------------------------------------------------------------------ FINDING P1
P1_LATTICE = Lattice.from_hasse({"public": ["alice"], "alice": ["top"], "top": []})
# The pool timeout of the store under test, shortened from psycopg_pool's 30 s so that the
# test does not wait that long; the behaviour is the same at 30 s.
P1_POOL_TIMEOUT_S = 2.0


def _guest_reply_to_put(store: Any, key: str) -> dict[str, Any]:
    """What a guest at public gets back for kv.put(t, key, ...): the monitor's reply frame,
    built by the same code that answers a confined child (sandbox/exchange.py)."""
    from trapeze.monitor import Invocation, Monitor
    from trapeze.monitor.audit import MemoryAudit
    from trapeze.sandbox import wire
    from trapeze.sandbox.exchange import _reply

    monitor = Monitor(P1_LATTICE, store, MemoryAudit("public"))
    inv = Invocation(request_id="r", function="f", label="public", response_bound="public",
                     deadline=time.time() + 60)
    frame = _reply(1, "kv.put", {"table": "t", "key": key, "value": "low"},
                   lambda op, args: monitor.handle(inv, op, args), 1 << 20)
    return dict(wire.unpack_body(frame[wire.HEADER.size:]))


def _p1_world(cluster: Any, high_key: str) -> dict[str, Any]:
    import secrets as _secrets

    from trapeze.store import open_store

    schema = f"p1_{_secrets.token_hex(4)}"
    url = cluster.url(schema=schema)
    seed = open_store(url, P1_LATTICE)  # public is interned before the node opens its store
    seed.put("t", "seed", 0, label="public")
    node = open_store(cluster.url(schema=schema, pool_max="1"), P1_LATTICE)
    node._pool.pool.timeout = P1_POOL_TIMEOUT_S  # test speed only (see above)
    # Another process (another Ray node, the CLI) writes alice's data: the first facet at
    # alice, so `node` has not seen that label. The worlds differ only in its key.
    other = open_store(url, P1_LATTICE)
    other.put("t", high_key, "alice's secret", label="alice")
    try:
        return _guest_reply_to_put(node, "k")
    finally:
        for s in (other, node, seed):
            s.close()


def test_p1_a_low_write_does_not_fail_because_of_a_higher_facet_postgres(
        pg_cluster: Any) -> None:
    """FINDING P1. A guest at public writes key k through a PostgreSQL store whose pool has
    one connection (pool_max=1). In world A another process has written alice's facet on k,
    in world B on another key. The guest's reply must be the same; before the fix, in
    world A the write waited for a second connection (to reload the label snapshot) that
    its own held connection blocked, and the guest got "internal error" instead of True."""
    world_b = _p1_world(pg_cluster, "elsewhere")
    world_a = _p1_world(pg_cluster, "k")
    assert world_b == {"t": "reply", "id": 1, "ok": True, "value": True}
    assert world_a == world_b, (
        f"the reply to a public kv.put depends on an alice facet of its key: {world_a}")


# ------------------------------------------------------------------------------ FINDING A1
class _RecordingChannel:
    kind = "smtp"

    def __init__(self, name: str, bound: str) -> None:
        self.name, self.bound, self.sent = name, bound, []

    def send(self, message: Any, *, within: float | None = None) -> dict[str, Any]:
        self.sent.append(message)
        return {"sent": 1}

    def close(self) -> None:
        pass


def _digest(payload: Any, info: Any) -> Any:
    """A declassifier that releases to public how many items a top record holds (it reads
    the record itself, at its max_label, as docs recommend). It refuses, by raising, when
    the record is not as expected; which exception depends on the top record."""
    record = info["read"]("vault", "k")
    return {**payload, "count": len(record["items"])}


def _refusal_seen_at_alice(tmp_path: Path, top_record: Any) -> tuple[str, list[Any]]:
    """The guest's error and the audit entries a viewer at alice sees, when a function at
    alice sends email through the declassifier and it refuses."""
    from trapeze.errors import FlowError
    from trapeze.monitor import Declassifier, Invocation, MemoryAudit, Monitor
    from trapeze.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 'a1.db'}", P1_LATTICE)
    store.put("vault", "k", top_record, label="top")
    audit = MemoryAudit("public")
    monitor = Monitor(
        P1_LATTICE, store, audit, channels={"email": _RecordingChannel("email", "public")},
        declassifiers={"digest": Declassifier("digest", "email", "top", "public", _digest)})
    inv = Invocation("r", "f", "alice", "alice", time.time() + 60)
    try:
        monitor.handle(inv, "channel.send", {"channel": "email", "message": {"to": "x@y"}})
        error = "sent"
    except FlowError as e:
        error = f"FlowError: {e}"
    finally:
        store.close()
    seen = [(e["kind"], e["label"], e["detail"])
            for e in audit.visible_to(lambda lab: P1_LATTICE.flows(lab, "alice"))]
    return error, seen


def test_a1_a_declassifier_refusal_records_nothing_of_top_data_at_the_callers_label(
        tmp_path: Path) -> None:
    """FINDING A1. A function at alice sends through a declassifier (max_label top) that
    reads a top record and refuses when it is malformed. In world A the record's items are
    null (the declassifier raises TypeError), in world B absent (KeyError). The guest's
    FlowError is the same, as it should be (the refusal is the declared release); but the
    audit entry, at alice, names the exception class, so a viewer at alice learns which."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    world_a = _refusal_seen_at_alice(tmp_path / "a", {"items": None})
    world_b = _refusal_seen_at_alice(tmp_path / "b", {})
    assert world_a[0] == world_b[0]
    assert world_a[0].startswith("FlowError")
    assert world_a[1] == world_b[1], (
        f"alice's audit view depends on top data:\n  A: {world_a[1]}\n  B: {world_b[1]}")


# ------------------------------------------------------------------------------ FINDING P2
def test_p2_a_key_the_store_accepts_is_accepted_by_both_backends(
        pg_cluster: Any, tmp_path: Path) -> None:
    """FINDING P2 (a backend difference, not a flow). values.check_key admits keys of up to
    1024 characters; 1024 four-byte characters are 4 KiB of UTF-8, more than a PostgreSQL
    btree entry may hold (2704 bytes, index facets_key_seq). SQLite stores the facet;
    PostgreSQL fails the INSERT and the guest gets "internal error". The same guest call
    must get the same answer on both backends (accepted, or a clear InvalidArgument)."""
    import random
    import secrets as _secrets

    from trapeze.store import open_store

    rng = random.Random(0)  # incompressible (PostgreSQL compresses a repetitive entry)
    key = "".join(chr(0x10000 + rng.randrange(0xFFFF)) for _ in range(1024))
    answers = {}
    for name, url in (("sqlite", f"sqlite:///{tmp_path / 'p2.db'}"),
                      ("postgresql", pg_cluster.url(schema=f"p2_{_secrets.token_hex(4)}"))):
        store = open_store(url, P1_LATTICE)
        try:
            answers[name] = _guest_reply_to_put(store, key)
        finally:
            store.close()
    assert answers["postgresql"] == answers["sqlite"], answers
    assert answers["postgresql"].get("kind") != "TrapezeError", answers


# ------------------------------------------------------------------------------ SOUND S1
def _guest_replies(store: Any, calls: list[tuple[str, dict[str, Any]]],
                   max_body: int) -> list[dict[str, Any]]:
    """The reply frames a guest at public gets for `calls`, as the sandbox would send them
    (values, error kinds and messages, the reply-size limit)."""
    from trapeze.monitor import Invocation, Monitor
    from trapeze.monitor.audit import MemoryAudit
    from trapeze.sandbox import wire
    from trapeze.sandbox.exchange import _reply

    monitor = Monitor(P1_LATTICE, store, MemoryAudit("public"))
    inv = Invocation(request_id="r", function="f", label="public", response_bound="public",
                     deadline=time.time() + 60)
    out = []
    for i, (op, args) in enumerate(calls):
        frame = _reply(i, op, args, lambda o, a: monitor.handle(inv, o, a), max_body)
        out.append(dict(wire.unpack_body(frame[wire.HEADER.size:])))
    return out


S1_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("kv.get", {"table": "t", "key": "a"}),
    ("kv.get", {"table": "t", "key": "b"}),
    ("kv.get", {"table": "t", "key": "e"}),
    ("kv.facets", {"table": "t", "key": "a"}),
    ("kv.facets", {"table": "t", "key": "c"}),
    ("kv.scan", {"table": "t", "limit": 2}),
    ("kv.scan", {"table": "t", "start_after": "a", "limit": 2}),
    ("kv.scan", {"table": "t", "prefix": "b"}),
    ("kv.scan", {"table": "t", "limit": 1000}),           # small at public, huge above
    ("kv.scan", {"table": "big", "limit": 1000}),          # too large at public already
    ("kv.put", {"table": "t", "key": "a", "value": 2, "expect": 1}),
    ("kv.put", {"table": "t", "key": "b", "value": "new", "expect": None}),
    ("kv.put", {"table": "t", "key": "c", "value": 0, "expect": "alice's"}),
    ("kv.put", {"table": "t", "key": "d", "value": 1, "expect": float("nan")}),
    ("kv.delete", {"table": "t", "key": "e"}),
    ("kv.put", {"table": "t", "key": "e", "value": 3, "expect": None}),
    ("kv.scan", {"table": "t", "limit": 0}),
    ("kv.get", {"table": "_sys", "key": "a"}),
    ("kv.get", {"table": "t", "key": 7}),
    ("kv.scan", {"table": "t", "limit": 1000}),
]


def _s1_world(url_of: Any, high: bool) -> list[dict[str, Any]]:
    from trapeze.store import open_store

    url = url_of()
    node = open_store(url, P1_LATTICE)  # the reader: its label snapshot is taken now
    other = open_store(url, P1_LATTICE)  # another process, writing above public
    try:
        node.put("t", "a", 1, label="public")
        node.put("t", "c", "x" * 10, label="public")
        node.put("t", "e", "old", label="public")
        for i in range(4):
            node.put("big", f"k{i}", "y" * 800, label="public")
        if high:
            other.put("t", "a", "A" * 5000, label="alice")     # newer, bigger, same key
            other.put("t", "b", "alice's", label="alice")     # a key only alice has
            other.put("t", "bb", "top's", label="top")
            other.delete("t", "c", label="alice")              # a higher tombstone
            other.put("t", "c", "alice's", label="top")
            other.put("t", "d", "D" * 5000, label="alice")
            other.put("t", "e", None, label="alice")           # JSON null above
        return _guest_replies(node, S1_CALLS, max_body=2000)
    finally:
        other.close()
        node.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_s1_store_replies_and_errors_at_public_ignore_higher_facets(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """SOUND (pins what was checked). A guest at public makes reads, paginated and limited
    scans, conditional writes, deletes and malformed calls; the two worlds differ only in
    facets at alice and top, written through another store instance (labels the reader's
    snapshot has not seen, bigger values, tombstones and JSON null above, keys only alice
    has). Every reply frame — values, error kinds, error texts, the reply-size
    LimitExceeded — must be identical. (PostgreSQL with its default pool: see P1.)"""
    import itertools
    import secrets as _secrets

    if backend == "postgresql":
        cluster = request.getfixturevalue("pg_cluster")
        url_of = lambda: cluster.url(schema=f"s1_{_secrets.token_hex(4)}")  # noqa: E731
    else:
        n = itertools.count()
        url_of = lambda: f"sqlite:///{tmp_path}/s1-{next(n)}.db"  # noqa: E731
    low = _s1_world(url_of, high=False)
    high = _s1_world(url_of, high=True)
    assert low == high
    kinds = [r.get("kind") for r in low]
    # The script did reach the error paths it means to check.
    assert kinds.count("LimitExceeded") == 1 and kinds.count("InvalidArgument") == 4, low
    assert low[10]["value"] is True and low[11]["value"] is True and low[12]["value"] is False


# ------------------------------------------------------------------------------ FINDING D1
# A synchronous callee whose reply a response declassifier covers. The declassifier releases
# a constant whatever the callee's outcome (the review of session 6 made every outcome go
# through it, for top-level invocations). The callee's deadline is its caller's, so a callee
# that runs until its deadline (a decision taken above the caller, on admin data) takes the
# caller with it: the caller times out instead of getting the declassified constant.
D1_INNER = """\
from trapeze.guest import kv, label


def inner(event, context):
    label.raise_to("admin")  # covered by the declassifier: no withheld reply
    if kv.get("vault", "bit"):
        while True:  # runs on until its deadline
            pass
    return "done"
"""


def _d1_world(tmp_path: Path, bit: int) -> tuple[str, Any]:
    from trapeze import App

    root = tmp_path / f"d1-{bit}"
    app = write_callee_app(root / "app", D1_INNER, top=tmp_path)
    with App.load(app).start(store=f"sqlite:///{root / 'app.db'}") as rt:
        assert rt.invoke("seed", {"bit": bit}, as_label="admin").status == "ok"
        r = rt.invoke("outer", {}, as_label="public")
        return r.status, r.value


def test_d1_a_declassified_callee_that_runs_to_its_deadline_does_not_end_its_caller(
        tmp_path: Path) -> None:
    """FINDING D1. A function at public synchronously invokes a callee that raises to admin
    under a response declassifier releasing a constant; whether the callee then returns or
    runs to its deadline depends on an admin bit. Public must see the same reply. Before the
    fix the callee's deadline was the caller's (Invoker.invoke_sync), so in the
    second world the caller was killed with it: public saw status "timeout" instead of
    {"inner": {"ack": true}}."""
    world_0 = _d1_world(tmp_path, 0)
    world_1 = _d1_world(tmp_path, 1)
    assert world_0 == ("ok", {"inner": {"ack": True}})
    assert world_1 == world_0, f"public sees how the admin callee ended: {world_1}"
