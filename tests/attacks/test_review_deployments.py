"""Review: differences between deployments (embedded SQLite vs PostgreSQL + several nodes).

Every test here builds two worlds that differ only in what code *above* a low label did,
through a second, independent handle on the same PostgreSQL database (what another node or
another gateway of a cluster holds: its own connection pool, its own label snapshot, its own
claim session), and compares what the low side observes. No finding was confirmed in this
review; these tests are marked SOUND and pin the behaviour that was checked, so that a
change making the PostgreSQL path differ from the embedded one is caught:

* the faceted store on PostgreSQL when a *stale* node (its label snapshot taken before a
  high writer on another node interned new labels) reads, scans, lists facets and writes
  conditionally at a low label (the "undecided label" retry path of store/postgres.py);
* engine claims (session advisory locks): a high lane's or execution's claim held by one
  engine never makes another engine's claim of a low one fail;
* activity tasks (``FOR UPDATE SKIP LOCKED``): which task a low worker gets does not
  depend on pending or claimed higher tasks of the same activity;
* execution names (advisory-locked check-then-insert): a higher execution of the same name
  started through another engine does not make a low start clash.
"""

from __future__ import annotations

from typing import Any

from trapeze.runtime.engine_store import EngineDB
from trapeze.runtime.engine_store.base import exec_claim, lane_claim
from trapeze.store import open_store

LOW = "public"


def _with_schema(url: str, schema: str) -> str:
    return url + ("&" if "?" in url else "?") + f"schema={schema}"


# --------------------------------------------------------------------------- faceted store


def _store_world(url: str, lattice: Any, high_acts: bool) -> list[Any]:
    """Node A (the low observer) opens first and warms its label snapshot; node B, a second
    process on the same database, then (in the high world only) writes at labels node A has
    never seen, on the very keys node A reads. Node A's snapshot is therefore stale: every
    high facet is 'undecided' for it until it reloads."""
    node_a = open_store(url, lattice)
    node_b = open_store(url, lattice)
    try:
        node_a.put("t", "k", {"v": "low-1"}, label=LOW)
        node_a.put("t", "m", "low-m", label=LOW)
        node_a.delete("t", "gone", label=LOW)
        assert node_a.get("t", "k", label=LOW) == {"v": "low-1"}  # snapshot taken
        if high_acts:
            # Labels new to the store (interned now, by node B only).
            node_b.put("t", "k", {"v": "secret"}, label="alice")
            node_b.put("t", "k", "more secret", label="top")
            node_b.put("t", "h", "high-only key", label="bob")
            node_b.put("t", "gone", "resurrected above", label="alice")
            node_b.put("t", "m", "cond", label="bob", expect="low-m")
            node_b.delete("t", "m", label="top")
            node_b.put("hidden-table", "x", 1, label="top")
        obs: list[Any] = [
            node_a.get("t", "k", label=LOW),
            node_a.facets("t", "k", label=LOW),
            node_a.get("t", "h", label=LOW),
            node_a.get("t", "gone", label=LOW),
            node_a.scan("t", label=LOW),
            node_a.scan("t", label=LOW, limit=1),
            node_a.scan("t", label=LOW, start_after="k", limit=1),
            node_a.tables(label=LOW),
            # Conditional writes at low decided on the low view only.
            node_a.put("t", "k", {"v": "low-2"}, label=LOW, expect={"v": "low-1"}),
            node_a.put("t", "h", "low-h", label=LOW, expect=None),
            node_a.put("t", "m", "low-m2", label=LOW, expect="low-m"),
        ]
        obs += [node_a.get("t", k, label=LOW) for k in ("k", "h", "m")]
        obs.append(node_a.scan("t", label=LOW))
        return obs
    finally:
        node_a.close()
        node_b.close()


def test_SOUND_pg_stale_node_low_view_independent_of_high_writes_on_other_node(
        pg_database: str, lattice: Any) -> None:
    """SOUND. A node whose label snapshot predates labels interned by another node sees
    their facets as 'undecided' and reloads (store/postgres.py ``_read``/``facet_put``
    returning NULL). Its low answers — get, facets, scan with limits and start_after,
    tables, and conditional puts — must be those of a world where the high node did
    nothing."""
    quiet = _store_world(_with_schema(pg_database, "w_quiet"), lattice, high_acts=False)
    busy = _store_world(_with_schema(pg_database, "w_busy"), lattice, high_acts=True)
    assert quiet == busy
    assert quiet[8:11] == [True, True, True]


# ----------------------------------------------------------------------------- engines


def _claims_world(url: str, high_acts: bool) -> list[bool]:
    a, b = EngineDB.open(url), EngineDB.open(url)
    try:
        if high_acts:
            # Engine B holds the claims of the *high* lanes of the same partition and of a
            # high execution (what delivering / running them does).
            for label in ("alice", "top"):
                assert b.claim(lane_claim("events", "sink", "p0", label))
            assert b.claim(exec_claim("wf:high:0123"))
        got = [a.claim(lane_claim("events", "sink", "p0", LOW)),
               a.claim(lane_claim("events", "audit", "p0", LOW)),
               a.claim(exec_claim("wf:low:0123"))]
        a.release(lane_claim("events", "sink", "p0", LOW))
        got.append(a.claim(lane_claim("events", "sink", "p0", LOW)))
        return got
    finally:
        a.close()
        b.close()


def test_SOUND_pg_high_claims_on_other_engine_never_block_low_claims(
        pg_database: str) -> None:
    """SOUND. Claims are session-level advisory locks on hashtextextended(prefix || key);
    the lane key carries the label, so an engine holding a high lane of the same
    (stream, consumer, partition) does not make another engine's low claim fail."""
    quiet = _claims_world(_with_schema(pg_database, "c_quiet"), high_acts=False)
    busy = _claims_world(_with_schema(pg_database, "c_busy"), high_acts=True)
    assert quiet == busy == [True, True, True, True]


def _activity_world(url: str, high_acts: bool) -> list[Any]:
    a, b = EngineDB.open(url), EngineDB.open(url)
    try:
        if high_acts:
            # Older high tasks of the same activity, one already claimed by a high worker
            # through the other engine (its row lock gone, its status 'claimed').
            b.new_token("h1", "wf:x:1", "", "alice", "photo", '"h1"')
            b.new_token("h2", "wf:x:2", "", "top", "photo", '"h2"')
            b.new_token("h3", "wf:x:3", "", "alice", "photo", '"h3"')
            assert b.claim_activity_task("photo", "alice", None) == ("h1", '"h1"')
        a.new_token("l1", "wf:y:1", "", LOW, "photo", '"l1"')
        a.new_token("l2", "wf:y:2", "", LOW, "photo", '"l2"')
        return [a.claim_activity_task("photo", LOW, None),
                b.claim_activity_task("photo", LOW, None),
                a.claim_activity_task("photo", LOW, None),
                a.settle_token("l1", "succeeded", '"ok"', None, None),
                a.settle_token("l1", "succeeded", '"ok"', None, None)]
    finally:
        a.close()
        b.close()


def test_SOUND_pg_low_activity_worker_ignores_high_tasks(pg_database: str) -> None:
    """SOUND. ``claim_activity_task`` on PostgreSQL filters on exactly the worker's label
    inside the ``FOR UPDATE SKIP LOCKED`` subquery: high tasks (pending, or claimed by a
    high worker on another engine) change neither which low task comes first nor whether
    one comes."""
    quiet = _activity_world(_with_schema(pg_database, "a_quiet"), high_acts=False)
    busy = _activity_world(_with_schema(pg_database, "a_busy"), high_acts=True)
    assert quiet == busy
    assert quiet[:3] == [("l1", '"l1"'), ("l2", '"l2"'), None]


def _names_world(url: str, lattice: Any, high_acts: bool) -> list[bool]:
    a, b = EngineDB.open(url), EngineDB.open(url)
    try:
        if high_acts:
            assert b.create_execution("wf:dup:h", "wf", "dup", "alice", "{}",
                                      lambda other: lattice.flows(other, "alice"), "S")
            # And one held claimed (running) by engine B.
            assert b.claim(exec_claim("wf:dup:h"))
        low = lambda other: lattice.flows(other, LOW)  # noqa: E731
        return [a.create_execution("wf:dup:l", "wf", "dup", LOW, "{}", low, "S"),
                a.create_execution("wf:dup:l2", "wf", "dup", LOW, "{}", low, "S")]
    finally:
        a.close()
        b.close()


def test_SOUND_pg_low_start_does_not_clash_with_high_execution_on_other_engine(
        pg_database: str, lattice: Any) -> None:
    """SOUND. The name check runs under a transaction-scoped advisory lock on (workflow,
    name) and counts only executions the starter could see: an execution of the same name
    started at ``alice`` through another engine does not make the ``public`` start fail
    (and the second low start clashes in both worlds, with the first low one)."""
    quiet = _names_world(_with_schema(pg_database, "n_quiet"), lattice, high_acts=False)
    busy = _names_world(_with_schema(pg_database, "n_busy"), lattice, high_acts=True)
    assert quiet == busy == [True, False]
