"""Workflow engines on one PostgreSQL database, as two nodes of a cluster would run them.

Each engine has its own EngineDB (its own connection pool and claim session). An execution
is run by one engine at a time; when its engine stops, another adopts it and finishes it
from the last recorded state; activity tasks go to exactly one worker whichever engine it
asks; and an engine that lost its claim can no longer write.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest

from trapeze.labels import Lattice
from trapeze.policy.specs import WorkflowSpec
from trapeze.runtime.engine_store import ClaimLost, EngineDB, Lane, exec_claim
from trapeze.runtime.workflows import WorkflowEngine

SCALE = 0.01


def task(resource: str, nxt: str | None = None, **extra: Any) -> dict[str, Any]:
    st = {"Type": "Task", "Resource": resource, **extra}
    st.update({"Next": nxt} if nxt else {"End": True})
    return st


SHARED = {
    "StartAt": "One",
    "States": {
        "One": task("effect", "Nap", Parameters={"step": "one", "exec.$": "$$.Execution.Name"}),
        # 2 s scaled: engine A must stop while all of its executions wait here, and the six
        # reach their Waits up to 0.3 s apart on a loaded machine (0.6 s was the margin).
        "Nap": {"Type": "Wait", "Seconds": 200, "Next": "Two"},
        "Two": task("effect", "Approve", Parameters={"step": "two",
                                                     "exec.$": "$$.Execution.Name"}),
        "Approve": {"Type": "Task", "Resource": "activity:approve", "TimeoutSeconds": 3000,
                    "Parameters": {"exec.$": "$$.Execution.Name"}, "ResultPath": "$.ok",
                    "Next": "Three"},
        "Three": task("effect", None, Parameters={"step": "three",
                                                  "exec.$": "$$.Execution.Name"}),
    },
}


def _exited(db: EngineDB, exec_id: str) -> list[str]:
    return [e["state"] for e in db.history(exec_id) if e["type"] == "StateExited"]


def test_two_engines_share_executions_and_take_over_a_stopped_one(
        pg_database: str, lattice: Lattice, fake: Any) -> None:
    effects: Counter[tuple[str, str]] = Counter()
    ran_on: dict[tuple[str, str], str] = {}
    lock = threading.Lock()

    def effect(engine: str) -> Any:
        def fn(event: Any, ctx: Any) -> Any:
            with lock:
                effects[(event["exec"], event["step"])] += 1
                ran_on[(event["exec"], event["step"])] = engine
            return event["step"]
        return fn

    spec = {"wf": WorkflowSpec("wf", Path("/wf.json"), (), SHARED)}
    dbs = {who: EngineDB.open(pg_database) for who in "AB"}
    engines = {who: WorkflowEngine(dbs[who], lattice, spec, fake({"effect": effect(who)}),
                                   functions={"effect"}, time_scale=SCALE,
                                   adopt_interval=0.05)
               for who in "AB"}
    stop_workers = threading.Event()

    def worker() -> None:
        # Activity workers ask engine B (A is stopped half-way) and complete at the label.
        while not stop_workers.is_set():
            got = engines["B"].get_activity_task("approve", "public", wait_s=0.2)
            if got is not None:
                engines["B"].complete_task(got["taskToken"], {"by": "worker"},
                                           caller_label="public")

    workers = [threading.Thread(target=worker) for _ in range(2)]
    try:
        for eng in engines.values():
            assert eng.resume() == []  # nothing to adopt yet; starts the adoption loops
        arns = {who: [engines[who].start("wf", f"{who}-{i}", {}, "public")["executionArn"]
                      for i in range(3)] for who in "AB"}
        everything = arns["A"] + arns["B"]
        # While both run, every execution stays with the engine that started it (the other
        # one's adoption loop sees it claimed).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(
                any(e["type"] == "WaitStarted" for e in dbs["A"].history(a))
                for a in everything):
            time.sleep(0.01)
        assert {ran_on[(f"{who}-{i}", "one")] for who in "AB" for i in range(3)
                if ran_on[(f"{who}-{i}", "one")] != who} == set()
        # Engine A goes away during the Wait: B adopts its executions and finishes them.
        engines["A"].stop()
        for t in workers:
            t.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(
                dbs["B"].executions(exec_id=a)[0]["status"] == "RUNNING" for a in everything):
            time.sleep(0.02)
    finally:
        stop_workers.set()
        for t in workers:
            if t.is_alive():
                t.join()
        for eng in engines.values():
            eng.stop(5)
        for db in dbs.values():
            db.close()

    db = EngineDB.open(pg_database)
    try:
        for arn in everything:
            row = db.executions(exec_id=arn)[0]
            assert row["status"] == "SUCCEEDED", (arn, row)
            assert _exited(db, arn) == ["One", "Nap", "Two", "Approve", "Three"]
    finally:
        db.close()
    # Each step ran exactly once (no step was in flight when A stopped) ...
    assert set(effects.values()) == {1} and len(effects) == 18
    # ... and A's executions finished on B.
    assert {ran_on[(f"A-{i}", step)] for i in range(3) for step in ("two", "three")} == {"B"}


def test_activity_tasks_go_to_exactly_one_worker_across_engines(pg_database: str) -> None:
    dbs = [EngineDB.open(pg_database), EngineDB.open(pg_database)]
    try:
        tokens = [f"tok-{i}" for i in range(40)]
        for token in tokens:
            dbs[0].new_token(token, "e", "", "public", "photo", "{}")
        dbs[0].new_token("other-label", "e", "", "alice", "photo", "{}")
        got: list[str] = []
        lock = threading.Lock()

        def claim(db: EngineDB) -> None:
            while (task_ := db.claim_activity_task("photo", "public", None)) is not None:
                with lock:
                    got.append(task_[0])

        threads = [threading.Thread(target=claim, args=(db,)) for db in dbs for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(got) == sorted(tokens)  # each once; the alice task was not handed out
        assert dbs[1].token("other-label")["status"] == "pending"  # type: ignore[index]
    finally:
        for db in dbs:
            db.close()


def test_a_lost_claim_fences_the_old_holder(pg_database: str, pg_cluster: Any) -> None:
    """Engine A's claim session dies (a network cut, a killed connection): B can claim the
    execution and the lane, and A's later writes are refused instead of overwriting B's."""
    a, b = EngineDB.open(pg_database), EngineDB.open(pg_database)
    try:
        assert a.create_execution("wf:x:1", "wf", "x", "public", "{}", lambda _: True, "S")
        lane = Lane("events", "sink", "p", "public", 0, 0, 0.0, 0)
        assert a.claim(exec_claim("wf:x:1")) and a.claim(lane.claim)
        assert not b.claim(exec_claim("wf:x:1")) and not b.claim(lane.claim)
        a.set_checkpoint(lane, 5, 0, 0.0)
        with psycopg.connect(pg_cluster.url(), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (a._claims._pid,))  # type: ignore[attr-defined]
        deadline = time.monotonic() + 5
        while not b.claim(exec_claim("wf:x:1")) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert b.claim(lane.claim)
        b.save_frame("wf:x:1", "", state="S", step=3, input_text="{}", label="public",
                     status="running", retries={}, root=True)
        b.set_checkpoint(lane, 9, 0, 0.0)
        with pytest.raises(ClaimLost):
            a.save_frame("wf:x:1", "", state="S", step=1, input_text="{}", label="public",
                         status="running", retries={}, root=True)
        with pytest.raises(ClaimLost):
            a.finish_execution("wf:x:1", "FAILED", "public", None, "Boom", None)
        with pytest.raises(ClaimLost):
            a.set_checkpoint(lane, 6, 0, 0.0)
        frame = b.frame("wf:x:1", "")
        assert frame is not None and frame["step"] == 3
        assert b.executions(exec_id="wf:x:1")[0]["status"] == "RUNNING"
        # And a checkpoint never goes backwards, even from its holder.
        b.set_checkpoint(lane, 7, 0, 0.0)
        assert [x.last_id for x in b.lanes("events", "sink")] == []  # no records: no lanes
        row = b._read(  # type: ignore[attr-defined]
            "SELECT last_id FROM {s}.trapeze_stream_checkpoints WHERE consumer = 'sink'")
        assert row == [(9,)]
        # A reconnects with no claims, and cannot take B's.
        assert not a.claim(exec_claim("wf:x:1"))
        assert a.claim(exec_claim("wf:y:2"))
    finally:
        a.close()
        b.close()


def test_postgres_engine_tables_use_the_store_schema_and_version(pg_database: str) -> None:
    db = EngineDB.open(pg_database + "?schema=engines_here")
    db.close()
    with psycopg.connect(pg_database, autocommit=True) as conn:
        rows = conn.execute("SELECT component, version FROM engines_here.trapeze_schema"
                            ).fetchall()
        assert rows == [("engine", 1)]
        conn.execute("UPDATE engines_here.trapeze_schema SET version = 99")
    from trapeze.store.base import StoreSchemaError

    with pytest.raises(StoreSchemaError, match="version 99"):
        EngineDB.open(pg_database + "?schema=engines_here")
