"""The stream engine against each backend (a SQLite file, a PostgreSQL database), with the
in-process fake function table."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from trapeze.errors import InvalidArgument, LimitExceeded, NotFound
from trapeze.policy.specs import StreamSpec
from trapeze.runtime.engine_store import EngineDB
from trapeze.runtime.streams import StreamEngine


def engine(db: Any, lattice: Any, invoke: Any, **spec: Any) -> StreamEngine:
    s = StreamSpec("events", consumers=spec.pop("consumers", ("sink",)), **spec)
    return StreamEngine(db, lattice, {"events": s}, invoke, workers=4, poll_interval=0.05,
                        backoff_base=0.01, backoff_max=0.05)


class Sink:
    """A consumer that remembers every batch it got and at which label."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[dict[str, Any]]]] = []
        self.lock = threading.Lock()

    def __call__(self, event: Any, ctx: Any) -> None:
        with self.lock:
            self.batches.append((ctx.label, event["Records"]))

    def data(self, label: str | None = None) -> list[Any]:
        return [r["data"] for lab, recs in self.batches for r in recs
                if label is None or lab == label]


def test_order_per_partition_and_batches(db: Any, lattice: Any, fake: Any) -> None:
    sink = Sink()
    eng = engine(db, lattice, fake({"sink": sink}), batch_size=4).start()
    try:
        for i in range(30):
            for p in ("a", "b", "c"):
                eng.put("events", {"p": p, "i": i}, p, "public")
        assert eng.wait_idle(20)
    finally:
        eng.stop()
    for p in ("a", "b", "c"):
        assert [d["i"] for d in sink.data() if d["p"] == p] == list(range(30))
    assert all(1 <= len(recs) <= 4 for _, recs in sink.batches)
    # One partition per batch, Kinesis-like record shape.
    for _, recs in sink.batches:
        assert len({r["partitionKey"] for r in recs}) == 1
        assert set(recs[0]) >= {"data", "partitionKey", "sequenceNumber",
                                "approximateArrivalTimestamp"}


def test_redelivery_after_consumer_crash_loses_nothing(db: Any, lattice: Any,
                                                       fake: Any) -> None:
    sink = Sink()
    failures = {"left": 5}

    def flaky(event: Any, ctx: Any) -> None:
        with sink.lock:
            if failures["left"] > 0 and event["Records"][0]["data"]["i"] % 3 == 0:
                failures["left"] -= 1
                raise RuntimeError("consumer crashed")
        sink(event, ctx)

    eng = engine(db, lattice, fake({"sink": flaky}), batch_size=2, max_attempts=10).start()
    try:
        for i in range(20):
            eng.put("events", {"i": i}, "k", "public")
        assert eng.wait_idle(20)
    finally:
        eng.stop()
    # Every record arrived, in order; the failed batches were redelivered as a whole.
    assert [d["i"] for d in sink.data()] == list(range(20))
    assert failures["left"] == 0
    assert eng.dead_letters("events", "top") == []


def test_restart_redelivers_the_batch_in_flight(db_url: str, lattice: Any, fake: Any) -> None:
    """The engine dies while a batch is being processed: a new engine delivers it again."""
    entered, release = threading.Event(), threading.Event()
    first: list[Any] = []

    def stuck(event: Any, ctx: Any) -> None:
        first.extend(r["data"]["i"] for r in event["Records"])
        entered.set()
        release.wait(5)
        raise RuntimeError("the process died")  # what the dead engine never recorded

    db1 = EngineDB.open(db_url)
    eng1 = engine(db1, lattice, fake({"sink": stuck}), batch_size=3)
    for i in range(7):
        eng1.put("events", {"i": i}, "k", "public")
    eng1.start()
    assert entered.wait(5)
    stopper = threading.Thread(target=eng1.stop)
    stopper.start()
    release.set()
    stopper.join()
    db1.close()

    sink = Sink()
    db2 = EngineDB.open(db_url)
    eng2 = engine(db2, lattice, fake({"sink": sink}), batch_size=3).start()
    try:
        assert eng2.wait_idle(20)
    finally:
        eng2.stop()
        db2.close()
    assert first == [0, 1, 2]
    assert [d["i"] for d in sink.data()] == list(range(7))


def test_mixed_labels_are_delivered_in_single_label_batches(db: Any, lattice: Any,
                                                            fake: Any) -> None:
    sink = Sink()
    eng = engine(db, lattice, fake({"sink": sink}), batch_size=10)
    labels = ["public", "alice", "alice", "public", "bob", "public", "alice", "top"]
    for i, lab in enumerate(labels):
        eng.put("events", {"i": i, "put_at": lab}, "k", lab)
    eng.start()
    try:
        assert eng.wait_idle(20)
    finally:
        eng.stop()
    assert sorted(d["i"] for d in sink.data()) == list(range(len(labels)))
    for batch_label, recs in sink.batches:
        # The consumer ran at the batch's label, which is every record's label.
        assert {r["data"]["put_at"] for r in recs} == {batch_label}
        assert all(r["sequenceNumber"].endswith("/" + batch_label) for r in recs)
    # Order among a label's own records, and never before an earlier record below it.
    seen = [d["i"] for d in sink.data()]
    for i, lab in enumerate(labels):
        for j in range(i):
            if lattice.flows(labels[j], lab):
                assert seen.index(j) < seen.index(i), (j, i)


def test_a_forged_label_field_means_nothing(db: Any, lattice: Any, fake: Any) -> None:
    sink = Sink()
    eng = engine(db, lattice, fake({"sink": sink}))
    forged = {"label": "top", "ifcLabel": "top", "callbackSecurityBound": "top", "x": 1}
    eng.put("events", forged, "k", "public")
    eng.start()
    try:
        assert eng.wait_idle(10)
    finally:
        eng.stop()
    assert sink.batches[0][0] == "public"
    assert sink.batches[0][1][0]["data"] == forged
    tail = eng.tail("events", "public")
    assert [(r["data"], r["label"]) for r in tail] == [(forged, "public")]


def test_dead_letters_after_max_attempts(db: Any, lattice: Any, fake: Any) -> None:
    sink = Sink()

    def poison(event: Any, ctx: Any) -> None:
        if any(r["data"].get("poison") for r in event["Records"]):
            raise ValueError("cannot parse")
        sink(event, ctx)

    eng = engine(db, lattice, fake({"sink": poison}), batch_size=1, max_attempts=3).start()
    try:
        eng.put("events", {"i": 0}, "k", "public")
        eng.put("events", {"i": 1, "poison": True}, "k", "public")
        eng.put("events", {"i": 2}, "k", "public")
        assert eng.wait_idle(20)
    finally:
        eng.stop()
    assert [d["i"] for d in sink.data()] == [0, 2]
    dead = eng.dead_letters("events", "public")
    assert [(d["data"]["i"], d["attempts"], d["label"]) for d in dead] == [(1, 3, "public")]
    assert "ValueError" in dead[0]["error"]


def test_failure_after_a_raise_never_holds_the_low_lane(db: Any, lattice: Any,
                                                        fake: Any) -> None:
    """A consumer that raised and failed failed at the raised label: the public lane moves
    on at once, and the dead letter is visible at that label only."""
    sink = Sink()

    def consumer(event: Any, ctx: Any) -> None:
        if event["Records"][0]["data"].get("secret"):
            ctx.raise_to("alice")
            raise ValueError("failed at alice")
        sink(event, ctx)

    eng = engine(db, lattice, fake({"sink": consumer}), batch_size=1, max_attempts=2).start()
    try:
        eng.put("events", {"i": 0, "secret": True}, "k", "public")
        eng.put("events", {"i": 1}, "k", "public")
        assert eng.wait_idle(20)
    finally:
        eng.stop()
    assert [d["i"] for d in sink.data()] == [1]
    assert eng.dead_letters("events", "public") == []
    assert [d["label"] for d in eng.dead_letters("events", "alice")] == ["alice"]


def _raise_then(outcome: str, sink: Sink | None = None) -> Any:
    """A consumer that raises to alice, then fails or (outcome "ok") records the batch."""
    def consumer(event: Any, ctx: Any) -> None:
        ctx.raise_to("alice")
        if outcome != "ok":
            raise ValueError("failed at alice")
        assert sink is not None
        sink(event, ctx)
    return consumer


@pytest.mark.parametrize("after_restart", ["ok", "fail"])
def test_a_detached_retry_survives_a_restart(db_url: str, lattice: Any, fake: Any,
                                             after_restart: str) -> None:
    """The batch of a consumer that raised and failed is retried detached, away from its
    lane. Those retries were held in a thread only: an engine stopped (or killed) during
    the backoff lost the batch — neither retried nor dead-lettered. Now the batch is a
    dead letter at the raised label from the first failure on, and the next engine resumes
    its retries: it leaves the dead letters if a retry succeeds, else ends there with every
    attempt counted."""
    spec = StreamSpec("events", consumers=("sink",), batch_size=1, max_attempts=3)
    db1 = EngineDB.open(db_url)
    # A long backoff: the first engine stops while its detached retry waits.
    eng1 = StreamEngine(db1, lattice, {"events": spec}, fake({"sink": _raise_then("fail")}),
                        poll_interval=0.05, backoff_base=30, backoff_max=30).start()
    eng1.put("events", {"i": 0}, "k", "public")
    deadline = time.monotonic() + 10
    while not eng1.dead_letters("events", "alice") and time.monotonic() < deadline:
        time.sleep(0.02)
    dead = eng1.dead_letters("events", "alice")
    assert [(d["data"], d["attempts"], d["label"]) for d in dead] == [({"i": 0}, 1, "alice")]
    assert eng1.dead_letters("events", "public") == []  # the lane never learns of it
    eng1.stop()
    db1.close()

    sink = Sink()
    db2 = EngineDB.open(db_url)
    eng2 = StreamEngine(db2, lattice, {"events": spec},
                        fake({"sink": _raise_then(after_restart, sink)}),
                        poll_interval=0.05, backoff_base=0.01, backoff_max=0.05).start()
    try:
        assert eng2.wait_idle(20)
        dead = eng2.dead_letters("events", "alice")
    finally:
        eng2.stop()
        db2.close()
    if after_restart == "ok":
        assert sink.data("alice") == [{"i": 0}]
        assert dead == []
    else:
        assert [(d["data"], d["attempts"], d["label"]) for d in dead] == \
            [({"i": 0}, 3, "alice")]
        assert "failed at alice" in dead[0]["error"]


def test_a_high_record_never_holds_back_a_lower_one(db: Any, lattice: Any, fake: Any) -> None:
    sink = Sink()
    release = threading.Event()

    def consumer(event: Any, ctx: Any) -> None:
        if ctx.label == "alice":
            release.wait(5)  # a slow or hung high consumer
        sink(event, ctx)

    eng = engine(db, lattice, fake({"sink": consumer})).start()
    try:
        eng.put("events", {"i": 0}, "k", "alice")
        eng.put("events", {"i": 1}, "k", "public")
        deadline = time.monotonic() + 5
        while not sink.data("public") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sink.data("public") == [{"i": 1}]
        assert sink.data("alice") == []
        release.set()
        assert eng.wait_idle(10)
    finally:
        release.set()
        eng.stop()
    assert sink.data("alice") == [{"i": 0}]


def _low_view(eng: StreamEngine) -> list[Any]:
    return [{k: v for k, v in r.items() if k not in ("approximateArrivalTimestamp",)}
            for r in eng.tail("events", "public", 100)] + eng.dead_letters("events", "public")


@pytest.mark.parametrize("high", ["none", "ok", "fail", "hang"])
def test_low_tail_is_the_same_whatever_happens_above(db_url: str, lattice: Any, fake: Any,
                                                     high: str) -> None:
    """Run the same public puts with or without alice/bob records between them, whose
    consumers succeed, fail or hang: the public view (records, numbers, order, dead
    letters) is identical."""
    db = EngineDB.open(db_url)
    release = threading.Event()

    def consumer(event: Any, ctx: Any) -> None:
        if ctx.label != "public":
            if high == "fail":
                raise ValueError("high failure")
            if high == "hang":
                release.wait(3)

    eng = engine(db, lattice, fake({"sink": consumer}), max_attempts=2).start()
    try:
        for i in range(6):
            eng.put("events", {"i": i}, f"p{i % 2}", "public")
            if high != "none":
                eng.put("events", {"secret": i}, f"p{i % 2}", "alice" if i % 2 else "bob")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if eng.db.lanes("events", "sink") and all(
                lane.last_id >= lane.newest for lane in eng.db.lanes("events", "sink")
                if lane.label == "public"
            ):
                break
            time.sleep(0.02)
        view = _low_view(eng)
    finally:
        release.set()
        eng.stop()
        db.close()
    expected = [{"data": {"i": i}, "partitionKey": f"p{i % 2}",
                 "sequenceNumber": f"{i + 1:012d}/public", "label": "public",
                 "eventID": f"p{i % 2}:{i + 1:012d}/public"} for i in range(6)]
    assert view == expected


def test_bad_puts_are_refused_clearly(db: Any, lattice: Any, fake: Any) -> None:
    eng = engine(db, lattice, fake({}), max_record_bytes=100)
    with pytest.raises(NotFound, match="no stream named 'nope'"):
        eng.put("nope", {}, "k", "public")
    with pytest.raises(LimitExceeded, match="at most 100"):
        eng.put("events", {"blob": "x" * 200}, "k", "public")
    with pytest.raises(InvalidArgument, match="JSON value"):
        eng.put("events", {"when": object()}, "k", "public")
    with pytest.raises(InvalidArgument, match="JSON value"):
        eng.put("events", float("nan"), "k", "public")
    with pytest.raises(InvalidArgument, match="partition key"):
        eng.put("events", 1, "", "public")
    with pytest.raises(NotFound):
        eng.tail("nope", "public")
    assert eng.tail("events", "top") == []
    # Nothing was stored by the refused puts.
    out = eng.put("events", {"ok": True}, None, "public")
    assert out == {"sequence": "000000000001/public", "partition": "default"}
    # A limit of 0 is allowed and means no records (on every backend).
    assert eng.tail("events", "public", 0) == []
    assert len(eng.tail("events", "public", 1)) == 1
