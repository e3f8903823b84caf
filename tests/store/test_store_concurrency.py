"""Concurrent writers (processes and threads), and a writer killed with SIGKILL."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from store.conftest import Backend
from store.invariants import check_write_rule_invariant
from store.model import ModelStore
from store.workers import KEYS, contend
from trapeze.labels import Lattice
from trapeze.store import FacetedStore

# Overlapping label sets: every worker can overwrite or be hidden by another.
WORKER_LABELS = [
    ["public", "client:alice"],
    ["client:alice", "client-cc:alice", "owner"],
    ["photographer:bob", "public", "top"],
    ["client:bob", "cc-company", "bottom"],
]


def test_processes_same_keys(backend: Backend, lattice: Lattice) -> None:
    url = backend.url()
    with backend.open(lattice, url):
        pass  # create the schema once, so the workers race on data, not on DDL
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(len(WORKER_LABELS)) as pool:
        results = pool.starmap(
            contend, [(url, w, labs, 300) for w, labs in enumerate(WORKER_LABELS)]
        )
    acked = sorted(a for r in results for a in r)
    # Seqs are only compared within a key (and only guaranteed distinct there): writes to
    # different keys in the same nanosecond may share one.
    for key in KEYS:
        seqs = [a[0] for a in acked if a[1] == key]
        assert len(set(seqs)) == len(seqs), f"two acknowledged writes to {key} share a seq"
    model = ModelStore(lattice)
    for seq, key, label, value, tomb in acked:
        model.put_seq("t", key, value, label=label, tombstone=tomb, seq=seq)
    with backend.open(lattice, url) as store:
        for key in KEYS:
            raw = store.raw_facets("t", key)
            check_write_rule_invariant(lattice, raw)
            assert raw == model.raw_facets("t", key)


def test_threads_counter(store: FacetedStore) -> None:
    """Compare-and-set increments from a thread pool: none lost, none doubled."""
    per_thread, threads = 40, 8

    def bump(_: int) -> int:
        retries = 0
        for _ in range(per_thread):
            while True:
                cur = store.get("c", "n", label="public")
                if store.put("c", "n", (cur or 0) + 1, label="public", expect=cur):
                    break
                retries += 1
        return retries

    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(bump, range(threads)))
    assert store.get("c", "n", label="public") == per_thread * threads


def test_threads_mixed_labels(store: FacetedStore, lattice: Lattice) -> None:
    barrier = threading.Barrier(6)

    def work(w: int) -> None:
        barrier.wait()
        labs = WORKER_LABELS[w % len(WORKER_LABELS)]
        for i in range(60):
            store.put("t", KEYS[i % len(KEYS)], [w, i], label=labs[i % len(labs)])
            store.get("t", KEYS[(i + 1) % len(KEYS)], label=labs[0])

    with ThreadPoolExecutor(6) as ex:
        list(ex.map(work, range(6)))
    for key in KEYS:
        check_write_rule_invariant(lattice, store.raw_facets("t", key))


def test_sigkill_keeps_committed_writes(backend: Backend, lattice: Lattice,
                                        tmp_path: Path) -> None:
    url = backend.url()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "store.workers", url],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    reported: list[tuple[int, str]] = []
    deadline = time.monotonic() + 60
    while len(reported) < 400 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        i, label = line.split()
        reported.append((int(i), label))
    os.kill(proc.pid, signal.SIGKILL)  # mid-stream: the writer never stops by itself
    rest, _ = proc.communicate(timeout=30)
    for line in rest.splitlines():  # printed before the kill landed: also committed
        if line.strip():
            i, label = line.split()
            reported.append((int(i), label))
    assert proc.returncode == -signal.SIGKILL
    assert len(reported) >= 400, "the writer did not get going"

    with backend.open(lattice, url) as store:
        for i, label in reported:
            key = f"key-{i:07d}"
            assert store.get("crash", key, label=label) == {"i": i, "pad": "x" * (i % 300)}
        check: Any = getattr(store, "integrity_check", None)
        assert check is not None and check() == ["ok"]
