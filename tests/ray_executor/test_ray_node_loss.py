"""Losing a Ray node under load: every request gets an answer, no acknowledged write is lost,
asynchronous work lost with the node is retried elsewhere, and a node that joins later is
used. (Runs last in this folder: it takes a node away from the session's cluster and puts a
new one back.)"""

from __future__ import annotations

import threading
import time
from typing import Any

from ray_helpers import NODES, wait_nodes

from trapeze.runtime.executors.ray import NODE_LOST
from trapeze.store import open_store

THREADS = 6
LOAD_S = 6.0
KILL_AT_S = 1.5


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
