"""Faceted store vs plain store: get, put and scan with 1, 4 and 16 facets per key.

    python benchmarks/bench_store.py              # full run (about a minute)
    python benchmarks/bench_store.py --quick      # smoke run
    python benchmarks/bench_store.py --cache-mb 64  # both stores with a 64 MiB page cache

Both stores are SQLite files in the same temporary directory with the same settings (WAL,
synchronous=NORMAL, same validation and value encoding), driven through their public API from
one thread. Faceted and plain batches alternate within each round (the order flips every
round), and the reported ratio is the median over rounds of faceted time / plain time, so
drift in machine speed hits both sides alike. ``--clock cpu`` times with the process's CPU
time instead of the wall clock: on a shared machine it is not inflated by other processes'
load (it does omit time blocked on I/O, which at synchronous=NORMAL is the checkpoints'
fsyncs, on both sides). ``--cache-mb N`` gives every store the same N MiB page cache (URL option
``cache_mb``) instead of SQLite's default 2 MB: with F facets per key the faceted file holds F
values per key, and past the cache its reads and writes miss where the plain store's do not.

Facet layout for F facets per key: one facet at ``public``, then F-1 facets at incomparable
labels ``client:u0`` ... (written after ``public``, so the write rule keeps all of them).
Readers:

* ``get newest``: reader at the label of the key's newest facet (one row visited);
* ``get oldest``: reader at ``public``, whose only visible facet is the oldest (all F rows
  visited: the worst case for a newest-first walk);
* ``put``: rewrite one's own facet at ``client:u0`` (or ``public`` when F = 1), so the key
  keeps F facets, with a new value each time (a counter in the value), as real writes do;
* ``put same``: the same, always writing the value already stored. Informational only:
  SQLite leaves a page clean when an update rewrites a cell with identical bytes, so the
  plain store's commit then writes nothing to the WAL, while a faceted put always changes
  the facet's seq and must write the page (earlier versions of this benchmark had only this
  case, which measured a plain store doing no I/O);
* ``scan``: 100 keys at ``owner`` (sees every facet; newest wins).

Control column ``vs plain ×F rows``: the same faceted time divided by a plain store holding F
rows per key (the key itself plus F-1 adjacent keys ``KEY~j``), for get and put on the same
keys. A faceted key with F facets holds F values, so part of the faceted/plain ratio at F > 1
is data volume (a bigger B-tree, fewer pages in SQLite's page cache, more distinct pages per
WAL checkpoint), not faceting; this column separates the two. It is not the target.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

from trapeze.labels import Lattice
from trapeze.labels.examples import HELLO_RETAIL
from trapeze.store import FacetedStore, PlainStore, open_plain_store, open_store

TABLE = "orders"


def facet_labels(n: int) -> list[str]:
    return ["public"] + [f"client:u{i}" for i in range(n - 1)]


def value(i: int) -> dict[str, object]:
    return {"id": i, "item": "camera", "qty": 2, "price": 199.5, "tags": ["a", "b"]}


def populate(fs: FacetedStore, ps: PlainStore, big: PlainStore, keys: list[str],
             n_facets: int) -> None:
    labs = facet_labels(n_facets)
    for i, key in enumerate(keys):
        for lab in labs:
            fs.put(TABLE, key, value(i), label=lab)
        ps.put(TABLE, key, value(i), label="public")
        big.put(TABLE, key, value(i))
        for j in range(1, n_facets):
            big.put(TABLE, f"{key}~{j}", value(i))


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def timed(fn: Callable[[], None]) -> float:
    gc.collect()
    t0 = clock()
    fn()
    return clock() - t0


def run(n_keys: int, ops: int, rounds: int, facet_counts: list[int],
        cache_mb: int | None = None) -> list[dict[str, object]]:
    lat = Lattice.from_hasse(HELLO_RETAIL)
    rows: list[dict[str, object]] = []
    query = "" if cache_mb is None else f"?cache_mb={cache_mb}"
    with tempfile.TemporaryDirectory() as tmp:
        for n_facets in facet_counts:
            rows += bench_facets(tmp, lat, n_facets, n_keys, ops, rounds, query)
    return rows


def bench_facets(
    tmp: str, lat: Lattice, n_facets: int, n_keys: int, ops: int, rounds: int, query: str = ""
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    # The same URL options (SQLite settings) for all three stores.
    fs = open_store(f"sqlite:///{tmp}/faceted-{n_facets}.db{query}", lat)
    ps = open_plain_store(f"sqlite:///{tmp}/plain-{n_facets}.db{query}")
    big = open_plain_store(f"sqlite:///{tmp}/plain-rows-{n_facets}.db{query}")
    keys = [f"order/{i:06d}" for i in range(n_keys)]
    populate(fs, ps, big, keys, n_facets)
    labs = facet_labels(n_facets)
    newest, writer = labs[-1], labs[1] if n_facets > 1 else labs[0]
    # Visit keys in a scattered but fixed order, the same on both sides.
    order = [keys[(i * 7919) % n_keys] for i in range(ops)]
    v = value(1)
    # Fresh values for "put": one counter shared by both sides, so both write the same
    # sequence of distinct values (and build the same dicts).
    counter = itertools.count()

    def fresh(i: int) -> dict[str, object]:
        return {"id": i, "item": "camera", "qty": next(counter), "price": 199.5,
                "tags": ["a", "b"]}

    def f_get_new() -> None:
        for k in order:
            fs.get(TABLE, k, label=newest)

    def f_get_old() -> None:
        for k in order:
            fs.get(TABLE, k, label="public")

    def p_get(store: PlainStore = ps) -> None:
        for k in order:
            store.get(TABLE, k, label="public")

    def f_put() -> None:
        for i, k in enumerate(order):
            fs.put(TABLE, k, fresh(i), label=writer)

    def p_put(store: PlainStore = ps) -> None:
        for i, k in enumerate(order):
            store.put(TABLE, k, fresh(i), label=writer)

    def f_put_same() -> None:
        for k in order:
            fs.put(TABLE, k, v, label=writer)

    def p_put_same() -> None:
        for k in order:
            ps.put(TABLE, k, v, label=writer)

    scans = max(1, ops // 100)

    def f_scan() -> None:
        for i in range(scans):
            fs.scan(TABLE, label="owner", start_after=keys[(i * 97) % n_keys],
                    limit=100)

    def p_scan() -> None:
        for i in range(scans):
            ps.scan(TABLE, label="owner", start_after=keys[(i * 97) % n_keys],
                    limit=100)

    def b_get() -> None:
        p_get(big)

    def b_put() -> None:
        p_put(big)

    Fn = Callable[[], None]
    cases: list[tuple[str, Fn, Fn, Fn | None, int]] = [
        ("get newest", f_get_new, p_get, b_get, ops),
        ("get oldest", f_get_old, p_get, b_get, ops),
        ("put", f_put, p_put, b_put, ops),
        ("put same", f_put_same, p_put_same, None, ops),
        ("scan 100", f_scan, p_scan, None, scans),
    ]
    for name, f_fn, p_fn, b_fn, count in cases:
        f_fn()  # warm caches (page cache, statement cache, label maps) on all sides
        p_fn()
        if b_fn is not None:
            b_fn()
        ratios, b_ratios, f_times, p_times = [], [], [], []
        for r in range(rounds):
            if r % 2:
                tp = timed(p_fn)
                tf = timed(f_fn)
            else:
                tf = timed(f_fn)
                tp = timed(p_fn)
            if b_fn is not None and n_facets > 1:
                b_ratios.append(tf / timed(b_fn))
            ratios.append(tf / tp)
            f_times.append(tf / count * 1e6)
            p_times.append(tp / count * 1e6)
        rows.append(
            {
                "op": name,
                "facets": n_facets,
                "plain_us": statistics.median(p_times),
                "faceted_us": statistics.median(f_times),
                "ratio": statistics.median(ratios),
                "rows_ratio": statistics.median(b_ratios) if b_ratios else None,
            }
        )
        print(
            f"  {name:<11} F={n_facets:<3} plain {rows[-1]['plain_us']:8.2f} us  "
            f"faceted {rows[-1]['faceted_us']:8.2f} us  ratio {rows[-1]['ratio']:.3f}",
            file=sys.stderr,
            flush=True,
        )
    fs.close()
    ps.close()
    big.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small smoke run")
    ap.add_argument("--keys", type=int, default=None)
    ap.add_argument("--ops", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="wall clock (default) or the process's CPU time")
    ap.add_argument("--cache-mb", type=int, default=None,
                    help="SQLite page cache of every store, MiB (default: SQLite's 2 MB)")
    args = ap.parse_args(argv)
    global clock
    clock = CLOCKS[args.clock]
    n_keys = args.keys or (500 if args.quick else 5000)
    ops = args.ops or (1000 if args.quick else 5000)
    rounds = args.rounds or (3 if args.quick else 9)
    rows = run(n_keys, ops, rounds, [1, 4, 16], args.cache_mb)
    cache = "SQLite's default page cache" if args.cache_mb is None else \
        f"{args.cache_mb} MiB page cache"
    print(f"\nStore benchmark: {n_keys} keys, {ops} ops per batch, {rounds} interleaved rounds, "
          f"{args.clock} clock, {cache}, SQLite {__import__('sqlite3').sqlite_version}, "
          f"Python {sys.version.split()[0]}\n")
    print("| op | facets/key | plain µs/op | faceted µs/op | faceted/plain (median) "
          "| vs plain ×F rows |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        rr = r["rows_ratio"]
        print(
            f"| {r['op']} | {r['facets']} | {r['plain_us']:.2f} | {r['faceted_us']:.2f} | "
            f"{r['ratio']:.3f} | {'–' if rr is None else f'{rr:.3f}'} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
