"""Two stream engines on one PostgreSQL database, as two nodes of a cluster would run them.

Each engine has its own EngineDB (its own connection pool and claim session), delivery
workers and scheduler; they share nothing but the database. Both put records and both
deliver: each record must reach each consumer exactly once, in lane order, and no
per-(stream, label) number may be handed out twice.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from typing import Any

from trapeze.policy.specs import StreamSpec
from trapeze.runtime.engine_store import EngineDB
from trapeze.runtime.streams import StreamEngine

LABELS = ("public", "alice", "bob")
PARTITIONS = ("p0", "p1", "p2", "p3")
PER_PRODUCER = 60


def test_two_engines_deliver_every_record_once_per_consumer_in_lane_order(
        pg_database: str, lattice: Any, fake: Any) -> None:
    spec = StreamSpec("events", consumers=("sink", "audit"), batch_size=3)
    # (consumer, engine, batch label, [record data]) in the order the deliveries ran.
    delivered: list[tuple[str, str, str, list[Any]]] = []
    lock = threading.Lock()

    def consumer(name: str, engine: str) -> Any:
        def fn(event: Any, ctx: Any) -> None:
            time.sleep(0.002)  # long enough for the other engine to claim other lanes
            with lock:
                delivered.append((name, engine, ctx.label,
                                  [r["data"] | {"seq": r["sequenceNumber"]}
                                   for r in event["Records"]]))
        return fn

    dbs = [EngineDB.open(pg_database), EngineDB.open(pg_database)]
    engines = [
        StreamEngine(db, lattice, {"events": spec},
                     fake({"sink": consumer("sink", who), "audit": consumer("audit", who)}),
                     workers=2, poll_interval=0.02, backoff_base=0.01, backoff_max=0.05)
        for who, db in zip("AB", dbs, strict=True)
    ]
    sequences: list[str] = []

    def produce(who: str, eng: StreamEngine) -> None:
        for i in range(PER_PRODUCER):
            label = LABELS[i % 3]
            out = eng.put("events", {"src": who, "i": i}, PARTITIONS[i % 4], label)
            with lock:
                sequences.append(out["sequence"])

    try:
        for eng in engines:
            eng.start()
        producers = [threading.Thread(target=produce, args=(who, eng))
                     for who, eng in zip("AB", engines, strict=True)]
        for t in producers:
            t.start()
        for t in producers:
            t.join()
        deadline = time.monotonic() + 30
        while not all(eng.idle() for eng in engines) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(eng.idle() for eng in engines)
    finally:
        for eng in engines:
            eng.stop()
        for db in dbs:
            db.close()

    # Numbers per (stream, label): each handed out once, 1..n without gaps.
    per_label: dict[str, list[int]] = defaultdict(list)
    for seq in sequences:
        n, label = seq.split("/")
        per_label[label].append(int(n))
    for label, ns in per_label.items():
        assert sorted(ns) == list(range(1, len(ns) + 1)), label

    expected = Counter((who, i) for who in "AB" for i in range(PER_PRODUCER))
    for name in ("sink", "audit"):
        mine = [d for d in delivered if d[0] == name]
        got = Counter((r["src"], r["i"]) for _, _, _, recs in mine for r in recs)
        assert got == expected, f"{name}: each record exactly once"
        lanes: dict[tuple[str, str], list[Any]] = defaultdict(list)
        for _, _, label, recs in mine:
            for r in recs:
                assert LABELS[r["i"] % 3] == label  # a batch never mixes labels
                lanes[(PARTITIONS[r["i"] % 4], label)].append(r)
        for lane, recs in lanes.items():
            # Lane order = append order = the lane's sequence numbers, increasing; so also
            # each producer's own order.
            ns = [int(r["seq"].split("/")[0]) for r in recs]
            assert ns == sorted(ns), lane
            for who in "AB":
                own = [r["i"] for r in recs if r["src"] == who]
                assert own == sorted(own), (lane, who)
    # Both engines did deliver (the claims shared the work, not just excluded one engine).
    assert {engine for _, engine, _, _ in delivered} == {"A", "B"}
