"""Label snapshots grow incrementally (docs/store.md, Performance).

Each store keeps a snapshot of ``facet_labels`` and, per caller label, the maps derived from
it (SQLite: bit masks up to 63 label ids, byte maps beyond; PostgreSQL: byte maps). When a
label is interned, here or by another process, the store reads only the rows past its snapshot
and carries the cached maps over, computing the new ids only: one new label costs each caller
label that calls again one ``lattice.flows`` call per map, not one per stored label. Checked:

* answers equal the reference model while other connections and processes intern labels
  under cached maps (SQLite: across the switch from masks to byte maps), including maps
  carried over several snapshots at once;
* threads that meet new ids at the same time, while another instance keeps interning;
* the number of ``flows`` calls one new label costs, counted rather than timed.
"""

from __future__ import annotations

import multiprocessing
import random
import threading
from typing import Any

from store.conftest import Backend, hello_retail
from store.invariants import check_write_rule_invariant
from store.model import ModelStore
from store.workers import intern_and_write
from trapeze.labels import Lattice
from trapeze.store import FacetedStore
from trapeze.store.postgres import _Labels
from trapeze.store.sqlite import _F_INTERN, _F_LABELS, SqliteFacetedStore, _LabelCache

KEYS = [f"k{i}" for i in range(5)]
READERS = ["bottom", "public", "owner", "top", "client:alice", "client-cc:alice",
           "photographer:bob", "cc-company", "client:g3", "photographer:g40"]


def _check(store: FacetedStore, model: ModelStore, readers: list[str]) -> None:
    for r in readers:
        for k in KEYS:
            assert store.get("t", k, label=r) == model.get("t", k, label=r), (r, k)
            assert store.facets("t", k, label=r) == model.facets("t", k, label=r), (r, k)
        assert store.scan("t", label=r) == model.scan("t", label=r), r
        assert store.tables(label=r) == model.tables(label=r), r


def _check_raw(store: FacetedStore, model: ModelStore, lattice: Lattice) -> None:
    for k in KEYS:
        raw = store.raw_facets("t", k)
        check_write_rule_invariant(lattice, raw)
        assert raw == model.raw_facets("t", k), k


def _record(model: ModelStore, acked: list[tuple[Any, ...]]) -> None:
    for seq, key, label, value, tomb in acked:
        model.put_seq("t", key, value, label=label, tombstone=tomb, seq=seq)


def _write(store: FacetedStore, model: ModelStore, key: str, label: str, value: Any) -> None:
    seq = store.put_seq("t", key, value, label=label, tombstone=value is None)
    _record(model, [(seq, key, label, value, value is None)])


def _check_carried_maps(store: FacetedStore) -> None:
    """Every map the store has cached equals the one a snapshot loaded from scratch builds:
    the maps carried over (extended by new ids, SQLite: masks turned byte maps) are exact."""
    if isinstance(store, SqliteFacetedStore):
        cache = store._load_labels()
        rows = store._conns.get().execute(_F_LABELS, (0,)).fetchall()
        fresh = _LabelCache(store._flows).extended(rows)
        assert fresh.n == cache.n and fresh.names == cache.names
        for label, entry in list(cache.readers.items()):
            assert entry == fresh.reader(label), label
        for label, wentry in list(cache.writers.items()):
            assert wentry == fresh.writer(label, wentry[0]), label
        for lid, up in list(cache.uppers.items()):
            assert up == fresh.above(lid), lid
        return
    pg: Any = store
    pgcache = pg._load_labels()
    with pg._pool.conn() as conn:
        rows = conn.execute(pg._sql["labels"], (0,)).fetchall()
    pgfresh = _Labels(pg._flows).extended([(int(i), str(lab)) for i, lab in rows])
    assert pgfresh.n == pgcache.n and pgfresh.names == pgcache.names
    for label, m in list(pgcache.readers.items()):
        assert m == pgfresh.reader(label), label
    for label, m in list(pgcache.uppers.items()):
        assert m == pgfresh.upper(label), label


def _new_writes(rng: random.Random, first: int, count: int) -> list[tuple[str, str, Any]]:
    """Writes at `count` labels no store has seen yet (tombstones among them)."""
    out = []
    for i in range(first, first + count):
        label = rng.choice(["client:g{}", "client-cc:g{}", "photographer:g{}"]).format(i)
        out.append((rng.choice(KEYS), label, None if rng.random() < 0.15 else [i, label]))
    return out


def test_labels_interned_by_another_connection(backend: Backend, lattice: Lattice) -> None:
    """b interns labels under a's cached maps, a few per round; a carries its maps over
    (the readers it skips in a round, over two snapshots or more at once) and keeps
    answering as the model does, for reads and for the write rule."""
    model = ModelStore(lattice)
    url = backend.url()
    rng = random.Random(7)
    with backend.open(lattice, url) as a, backend.open(hello_retail(), url) as b:
        for i, lab in enumerate(["public", "client:alice", "owner", "photographer:bob"]):
            _write(a, model, KEYS[i], lab, f"a{i}")
        _check(a, model, READERS)  # every reader's map is cached now
        for rnd in range(10):
            for key, lab, value in _new_writes(rng, 8 * rnd, 8):
                _write(b, model, key, lab, value)
            # a writes at labels it has cached, and at one b interned (a learns it late).
            _write(a, model, rng.choice(KEYS), rng.choice(["public", "client:alice"]), rnd)
            _write(a, model, rng.choice(KEYS), f"client:g{8 * rnd}", {"a": rnd})
            _check(a, model, READERS[rnd % 2 :: 2])
            _check_carried_maps(a)
        _check(a, model, READERS)
        _check_raw(a, model, lattice)
        _check_carried_maps(a)
        if isinstance(a, SqliteFacetedStore):
            # The maps built while masks sufficed were carried over to byte maps.
            assert a._cache.n > 63
            assert isinstance((a._readers.get("public") or a._reader("public"))[1], bytes)


def test_labels_interned_by_another_process(backend: Backend, lattice: Lattice) -> None:
    model = ModelStore(lattice)
    url = backend.url()
    rng = random.Random(11)
    ctx = multiprocessing.get_context("spawn")
    with backend.open(lattice, url) as a, ctx.Pool(1) as pool:
        _write(a, model, "k0", "public", "p")
        _write(a, model, "k1", "client:alice", "alice")
        _check(a, model, READERS)
        first = 0
        for count in (30, 50):  # SQLite: from masks (< 63 ids) to byte maps
            _record(model, pool.apply(intern_and_write, (url, _new_writes(rng, first, count))))
            first += count
            _check(a, model, READERS)
            _write(a, model, "k2", "public", count)  # removes what the process wrote above
            _write(a, model, "k3", "client-cc:alice", count)
            _check(a, model, READERS)
        _check_raw(a, model, lattice)


def test_threads_meet_new_labels_together(backend: Backend, lattice: Lattice) -> None:
    """Readers in several threads keep meeting label ids their snapshot lacks (another
    instance keeps interning and writing above them) and extend the one snapshot at once."""
    url = backend.url()
    with backend.open(lattice, url) as a, backend.open(hello_retail(), url) as b:
        a.put("t", "fixed", "P", label="public")
        stop = threading.Event()
        errors: list[BaseException] = []

        def interner() -> None:
            try:
                for i in range(120):
                    b.put("t", "fixed", i, label=f"client:n{i}")  # hidden from the readers
            finally:
                stop.set()

        def reader(w: int) -> None:
            try:
                n = 0
                while not stop.is_set() or n < 5:
                    for lab in ("public", "photographer:bob", "client:zed"):
                        assert a.get("t", "fixed", label=lab) == "P"
                        assert a.facets("t", "fixed", label=lab) == [("P", "public")]
                    a.put("t", f"own{w}", n, label=f"client:w{w}")
                    assert a.get("t", f"own{w}", label=f"client:w{w}") == n
                    assert a.scan("t", label="public") == [("fixed", "P")]
                    n += 1
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=reader, args=(w,)) for w in range(4)]
        threads.append(threading.Thread(target=interner))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[0]
        assert len(a.facets("t", "fixed", label="owner")) == 121
        assert a.get("t", "fixed", label="client:n77") == 77


# --------------------------------------------------------------------- the cost, counted


def _intern(store: FacetedStore, labels: list[str]) -> None:
    """Intern labels with the store's own statement on its own connection, building no map
    (as another process would)."""
    if isinstance(store, SqliteFacetedStore):
        conn = store._conns.get()
        with store._wlock:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_F_INTERN, [(lab,) for lab in labels])
            conn.execute("COMMIT")
        return
    pg: Any = store
    with pg._pool.conn() as conn, conn.transaction():
        conn.cursor().executemany(pg._sql["intern"], [(lab,) for lab in labels])


def _counting_lattice() -> tuple[Lattice, list[int]]:
    """Hello Retail whose flows() counts its calls (the store wraps it when it opens)."""
    lat = hello_retail()
    calls = [0]
    real = lat.flows

    def counting(a: str, b: str) -> bool:
        calls[0] += 1
        return real(a, b)

    lat.flows = counting  # type: ignore[method-assign, assignment]
    return lat, calls


STORED = 2000
CALLERS = ["public", "client:alice", "owner", "photographer:bob", "cc-company"]


def test_new_label_costs_flows_per_cached_label_not_per_stored_label(backend: Backend) -> None:
    """With 2,000 stored labels and 5 caller labels cached, a new label costs the callers a
    handful of flows calls each (their maps gain one id), where rebuilding the maps cost
    about 2 x 2,000 each. Counted, not timed."""
    counted, calls = _counting_lattice()
    url = backend.url()
    with backend.open(hello_retail(), url) as b:
        _intern(b, [f"client:s{i}" for i in range(STORED)])
        b.put("t", "shared", "p", label="public")
        with backend.open(counted, url) as a:

            def each_caller() -> None:
                for lab in CALLERS:
                    assert a.get("t", "shared", label=lab) in ("p", "new")
                    a.put("t", f"own-{lab}", lab, label=lab)
                    assert a.get("t", f"own-{lab}", label=lab) == lab
                    a.facets("t", "shared", label=lab)
                    a.scan("t", label=lab, limit=3)

            each_caller()  # builds the maps: each covers every stored label
            each_caller()  # (and the upward maps, once a put finds a facet to decide)
            assert calls[0] >= 2 * len(CALLERS) * STORED
            calls[0] = 0
            each_caller()
            assert calls[0] == 0  # cached: no lattice call at all

            # Another process interns a label and writes with it where the callers read: each
            # caller meets its id, the snapshot gains one row, each map one id.
            b.put("t", "shared", "new", label="client:new")
            calls[0] = 0
            each_caller()
            assert a.get("t", "shared", label="owner") == "new"
            assert a.get("t", "shared", label="public") == "p"
            bound = 3 * len(CALLERS)
            assert calls[0] <= bound, f"{calls[0]} flows calls for one new label"

            # This instance interns one itself (writing a fresh key). SQLite builds no map for
            # it (past 63 ids a writer's map is only built when a facet needs it); PostgreSQL
            # passes the writer's whole upward map to facet_put: one call per stored label,
            # for the new label's own map only.
            calls[0] = 0
            a.put("t", "fresh", 1, label="client:newer")
            own = 0 if isinstance(a, SqliteFacetedStore) else STORED + 10
            each_caller()
            assert calls[0] <= bound + own, f"{calls[0]} flows calls for one new label"
            assert a.get("t", "fresh", label="owner") == 1
