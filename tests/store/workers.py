"""Code run in child processes by the concurrency and crash tests (importable under spawn)."""

from __future__ import annotations

import random
import sys
from typing import Any

from store.conftest import hello_retail
from trapeze.store import open_store

KEYS = ["k0", "k1", "k2", "k3"]


def contend(url: str, worker: int, labels: list[str], n: int) -> list[tuple[Any, ...]]:
    """Write the same keys as the other workers, at this worker's labels.

    Returns every acknowledged write as (seq, key, label, value, tombstone); a failed
    conditional write is not acknowledged and is not returned.
    """
    rng = random.Random(worker)
    acked: list[tuple[Any, ...]] = []
    with open_store(url, hello_retail()) as store:
        for i in range(n):
            key = rng.choice(KEYS)
            label = rng.choice(labels)
            roll = rng.random()
            if roll < 0.15:
                seq = store.put_seq("t", key, None, label=label, tombstone=True)
                acked.append((seq, key, label, None, True))
                continue
            value = {"w": worker, "i": i}
            expect: Any
            if roll < 0.35:
                expect = store.get("t", key, label=label)  # may be stale by commit time
                seq = store.put_seq("t", key, value, label=label, expect=expect)
            else:
                seq = store.put_seq("t", key, value, label=label)
            if seq is not None:
                acked.append((seq, key, label, value, False))
    return acked


def intern_and_write(url: str, writes: list[tuple[str, str, Any]]) -> list[tuple[Any, ...]]:
    """Write (key, label, value) in order, most at labels the parent has never seen (so this
    process interns them); returns (seq, key, label, value, tombstone) per write."""
    acked: list[tuple[Any, ...]] = []
    with open_store(url, hello_retail()) as store:
        for key, label, value in writes:
            seq = store.put_seq("t", key, value, label=label, tombstone=value is None)
            acked.append((seq, key, label, value, value is None))
    return acked


def crash_writer(url: str) -> None:
    """Write forever, printing each write after put() returned (i.e. after commit)."""
    labels = ["public", "client:alice", "photographer:bob", "owner"]
    store = open_store(url, hello_retail())
    i = 0
    while True:
        label = labels[i % len(labels)]
        store.put("crash", f"key-{i:07d}", {"i": i, "pad": "x" * (i % 300)}, label=label)
        print(f"{i} {label}", flush=True)
        i += 1


if __name__ == "__main__":
    crash_writer(sys.argv[1])
