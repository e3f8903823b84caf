"""Losing a Ray node under load: every request gets an answer, no acknowledged write is lost,
asynchronous work lost with the node is retried elsewhere, and a node that joins later is
used. (Runs last in this folder: it takes a node away from the session's cluster and puts a
new one back.)"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from ray_executor.ray_helpers import NODES, wait_nodes
from trapeze.runtime.executors.ray import NODE_LOST
from trapeze.store import open_store

THREADS = 6
LOAD_S = 6.0
KILL_AT_S = 1.5


def test_an_agent_process_that_dies_is_replaced(ray_app: Any) -> None:
    """The agent's process dies (its node lives): the invocations it ran fail with the clear
    error, the others go on, and the node gets a new agent (its sandboxes died with it)."""
    rt = ray_app
    wait_nodes(rt, NODES)
    node, pid = sorted(rt._ray.agent_pids().items())[0]
    results: list[tuple[str, str | None]] = []

    def one(i: int) -> None:
        r = rt.invoke("writer", {"key": f"crash-{i}", "value": "v", "sleep_after": 1.5},
                      as_label="public")
        results.append((r.status, r.error))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2 * NODES)]
    for th in threads:
        th.start()
    time.sleep(0.7)  # all in flight, two on each node
    os.kill(pid, signal.SIGKILL)
    for th in threads:
        th.join(timeout=120)
    assert len(results) == 2 * NODES
    assert all(s == "ok" or (e or "").startswith(NODE_LOST) for s, e in results), results
    assert any(s == "error" for s, _ in results) and any(s == "ok" for s, _ in results)
    deadline = time.monotonic() + 120
    while rt._ray.agent_pids().get(node) in (None, pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert rt._ray.agent_pids().get(node) not in (None, pid)
    wait_nodes(rt, NODES)
    assert all(rt.invoke("writer", {"key": f"again-{i}", "value": "v"}).ok
               for i in range(2 * NODES))


def test_losing_a_node_mid_load(ray_cluster: Any, ray_app: Any) -> None:
    rt = ray_app
    wait_nodes(rt, NODES)
    victim = ray_cluster.workers[0]  # never the head: the gateway's bridge lives there

    # Asynchronous writers that sleep before writing: those that land on the victim are in
    # flight when it goes, have written nothing, and must be retried on another node.
    async_keys = [f"async-{i}" for i in range(2 * NODES)]
    spawned = rt.invoke("spawner", {"keys": async_keys, "sleep": 2.5}, as_label="public")
    assert spawned.status == "ok", spawned

    results: list[tuple[str, str, str | None, float]] = []
    lock = threading.Lock()
    start = time.monotonic()

    def load(t: int) -> None:
        i = 0
        while time.monotonic() - start < LOAD_S:
            key = f"sync-{t}-{i}"
            # The write commits before the reply; the sleep after it keeps the invocation in
            # flight, so some are on the victim when it goes.
            r = rt.invoke("writer", {"key": key, "value": key, "sleep_after": 0.1},
                          as_label="public")
            with lock:
                results.append((key, r.status, r.error, time.monotonic() - start))
            i += 1

    threads = [threading.Thread(target=load, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    time.sleep(KILL_AT_S)
    killed_at = time.monotonic() - start
    ray_cluster.cluster.remove_node(victim, allow_graceful=False)
    for th in threads:
        th.join(timeout=180)
    assert not any(th.is_alive() for th in threads), "a request got no answer"

    # Every request was answered: ok, or the clear node-lost error.
    statuses = {s for _, s, _, _ in results}
    assert statuses <= {"ok", "error"}, statuses
    errors = [(k, e) for k, s, e, _ in results if s == "error"]
    assert all(e and e.startswith(NODE_LOST) for _, e in errors), errors
    assert errors, "nothing was in flight on the lost node"
    assert any(s == "ok" and at > killed_at + 1 for _, s, _, at in results), \
        "the remaining nodes stopped serving"

    # Every acknowledged write is in PostgreSQL (read back through a new connection).
    store = open_store(rt.store_url, rt.lattice)
    try:
        acked = [k for k, s, _, _ in results if s == "ok"]
        missing = [k for k in acked if store.get("w", k, label="public") != k]
        assert not missing, missing
        # The lost asynchronous attempts were retried (writer: retries = 3) on other nodes.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and \
                any(store.get("w", k, label="public") != k for k in async_keys):
            time.sleep(0.2)
        assert [store.get("w", k, label="public") for k in async_keys] == async_keys
    finally:
        store.close()

    # A node that joins is given an agent and work.
    ray_cluster.workers[0] = ray_cluster.add_node()
    nodes = wait_nodes(rt, NODES)
    assert victim.node_id not in nodes
    for i in range(2 * NODES):
        assert rt.invoke("writer", {"key": f"after-{i}", "value": "x"}).status == "ok"
