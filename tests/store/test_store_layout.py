"""Store behaviour that depends on seqs and label ids rather than single calls.

* seq is a hybrid timestamp: strictly increasing per key even when the clock stands still or
  goes backwards;
* labels are interned per store file: a store instance must see, and obey the write rule
  for, labels that another instance (another process) interned after it took its snapshot;
* a facet whose label the current lattice does not know is invisible and never removed;
* (SQLite) files of the first layout (label text in facets, counter row) and of schema
  version 1 are migrated; a newer schema version is refused.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from store.conftest import Backend, hello_retail
from store.invariants import check_write_rule_invariant
from store.model import ModelStore
from trapeze.labels import Lattice
from trapeze.store import open_store
from trapeze.store.base import StoreSchemaError
from trapeze.store.sqlite import FACETED_SCHEMA_VERSION


def test_seq_rises_per_key_when_clock_stalls_or_goes_back(
    backend: Backend, lattice: Lattice, monkeypatch: pytest.MonkeyPatch
) -> None:
    with backend.open(lattice) as store:
        first = store.put_seq("t", "k", 1, label="public")
        assert first is not None
        clock = iter([5, 5, 3, 1] + [1] * 20)  # far behind the first write, then standing
        monkeypatch.setattr(time, "time_ns", lambda: next(clock))
        seqs = [first]
        for lab in ["client:a", "client:b", "photographer:p"]:
            seq = store.put_seq("t", "k", lab, label=lab)
            assert seq is not None and seq > seqs[-1]
            seqs.append(seq)
        # Newest visible facet wins although every seq after the first ignored the clock.
        assert store.get("t", "k", label="owner") == "photographer:p"
        store.delete("t", "k", label="client:b")
        raw = store.raw_facets("t", "k")
        assert raw[0][0] > seqs[-1] and raw[0][1] == "client:b"  # the tombstone is newest
        check_write_rule_invariant(lattice, raw)
        assert store.get("t", "k", label="owner") is None
        assert store.get("t", "k", label="client:a") == "client:a"
        assert store.get("t", "k", label="photographer:p") == "photographer:p"
        assert store.get("t", "k", label="public") == 1


def test_rewrite_after_other_instances_wrote(backend: Backend, lattice: Lattice) -> None:
    """A store may remember the seq of its own last write at a label to a key and start the
    write rule's walk there (SQLite's w_from). Whatever other instances did since (wrote above
    the label, removed the remembered facet from below and then wrote above again, rewrote
    the same label), a rewrite must still remove every facet at or above its label."""
    url = backend.url()
    with backend.open(lattice, url) as a, backend.open(lattice, url) as b:
        a.put("t", "k", "a1", label="client:alice")
        b.put("t", "k", "b-owner", label="owner")  # above a's facet, newer
        a.put("t", "k", "a2", label="client:alice")
        assert [lab for _, lab, _, _ in a.raw_facets("t", "k")] == ["client:alice"]

        b.put("t", "k", "b-public", label="public")  # removes a's remembered facet
        b.put("t", "k", "b-cc", label="client-cc:alice")  # above alice again
        b.put("t", "k", "b-top", label="top")
        a.put("t", "k", "a3", label="client:alice")
        raw = a.raw_facets("t", "k")
        assert [lab for _, lab, _, _ in raw] == ["client:alice", "public"]
        check_write_rule_invariant(lattice, raw)

        b.put("t", "k", "b-alice", label="client:alice")  # the same label, by b
        b.put("t", "k", "b-owner2", label="owner")
        a.delete("t", "k", label="client:alice")
        raw = a.raw_facets("t", "k")
        assert [(lab, tomb) for _, lab, _, tomb in raw] == [("client:alice", True),
                                                            ("public", False)]
        check_write_rule_invariant(lattice, raw)
        assert b.get("t", "k", label="owner") is None
        assert b.get("t", "k", label="client:bob") == "b-public"


def test_same_label_rewrite_when_clock_steps_back(
    backend: Backend, lattice: Lattice, monkeypatch: pytest.MonkeyPatch
) -> None:
    with backend.open(lattice) as store:
        clock = iter([10**18, 10**18 + 5, 7, 7] + [3] * 20)  # retries read it again
        monkeypatch.setattr(time, "time_ns", lambda: next(clock))
        seqs = [store.put_seq("t", "k", i, label="client:alice") for i in range(2)]
        store.put("t", "k", 2, label="client:alice")  # clock now far behind the key's seqs
        seqs.append(store.put_seq("t", "k", 3, label="client:alice"))
        store.delete("t", "k", label="client:alice")
        raw = store.raw_facets("t", "k")
        assert len(raw) == 1 and raw[0][3]  # one facet: the tombstone
        assert all(s is not None for s in seqs)
        assert seqs == sorted(seqs) and len(set(seqs)) == 3  # type: ignore[type-var]
        assert raw[0][0] > seqs[-1]  # type: ignore[operator]


def test_labels_interned_by_another_instance(backend: Backend, lattice: Lattice) -> None:
    url = backend.url()
    with backend.open(lattice, url) as a, backend.open(lattice, url) as b:
        a.put("t", "k", "a-public", label="public")
        assert a.get("t", "k", label="owner") == "a-public"  # a's label maps are built now
        # b interns labels a has never seen.
        b.put("t", "k", "b-alice", label="client:alice")
        b.put("t", "k2", "b-bob", label="photographer:bob")
        assert a.get("t", "k", label="owner") == "b-alice"
        assert a.get("t", "k", label="client:bob") == "a-public"
        assert a.facets("t", "k", label="client:alice") == [
            ("b-alice", "client:alice"), ("a-public", "public")
        ]
        assert a.scan("t", label="owner") == [("k", "b-alice"), ("k2", "b-bob")]
        assert a.tables(label="photographer:bob") == ["t"]
        # a's write at public must remove b's facets above public, labels a learnt late.
        a.put("t", "k", "a-again", label="public")
        a.put("t", "k2", "a-k2", label="public")
        for key in ("k", "k2"):
            raw = a.raw_facets("t", key)
            assert [lab for _, lab, _, _ in raw] == ["public"]
        assert b.get("t", "k", label="owner") == "a-again"
        # And a conditional write decides on the same view.
        b.put("t", "k", "b-cc", label="client-cc:alice")
        assert a.put("t", "k", "x", label="client:alice", expect="a-again")
        assert a.raw_facets("t", "k")[0][1] == "client:alice"
        assert [lab for _, lab, _, _ in a.raw_facets("t", "k")] == ["client:alice", "public"]


def test_facet_with_label_unknown_to_lattice(backend: Backend, tmp_path: Path) -> None:
    diagram = dict(hello_retail().diagram())
    diagram["public"] = [*diagram["public"], "intern:*"]
    diagram["intern:*"] = ["owner"]
    wider = Lattice.from_hasse(diagram)
    url = backend.url()
    with backend.open(wider, url) as s:
        s.put("t", "k", "secret", label="intern:zoe")
        s.put("t", "k", "pub", label="public")
        s.put("t", "k", "zoe-again", label="intern:zoe")
    with backend.open(hello_retail(), url) as s:
        for lab in ("bottom", "public", "owner", "top"):
            assert s.get("t", "k", label=lab) == ("pub" if lab != "bottom" else None)
            assert all(v != "zoe-again" for v, _ in s.facets("t", "k", label=lab))
        s.put("t", "k", "bottom-write", label="bottom")  # bottom ⊑ everything it knows
        labels = [lab for _, lab, _, _ in s.raw_facets("t", "k")]
        assert labels == ["bottom", "intern:zoe"]


def test_many_labels_match_model(backend: Backend, lattice: Lattice) -> None:
    """More distinct labels than fit a 63-bit mask: the SQLite backend switches from bit
    masks to byte maps, and from one to the other as labels are added mid-way."""
    model = ModelStore(lattice)
    with backend.open(lattice) as store:
        labels = ["public", "owner"] + [f"client:u{i}" for i in range(80)] + [
            f"client-cc:u{i}" for i in range(0, 80, 7)
        ]
        readers = ["bottom", "public", "owner", "top", "client:u3", "client:u77",
                   "client-cc:u70", "cc-company", "photographer:x"]
        for step, lab in enumerate(labels):
            key = f"k{step % 5}"
            if step % 9 == 4:
                seq = store.put_seq("t", key, None, label=lab, tombstone=True)
                model.put_seq("t", key, None, label=lab, tombstone=True, seq=seq)
            else:
                seq = store.put_seq("t", key, step, label=lab)
                model.put_seq("t", key, step, label=lab, seq=seq)
            if step % 10 == 0 or step > 60:  # answers before, across and after the switch
                for r in readers:
                    for k in ("k0", "k1", "k2", "k3", "k4"):
                        assert store.get("t", k, label=r) == model.get("t", k, label=r)
                        assert store.facets("t", k, label=r) == model.facets("t", k, label=r)
                    assert store.scan("t", label=r) == model.scan("t", label=r)
                    assert store.tables(label=r) == model.tables(label=r)
        for k in ("k0", "k1", "k2", "k3", "k4"):
            raw = store.raw_facets("t", k)
            check_write_rule_invariant(lattice, raw)
            assert raw == model.raw_facets("t", k)
        cache = getattr(store, "_cache", None)
        assert cache is None or cache.n > 63, "the byte-map path was not exercised"


# ------------------------------------------------------------------------- SQLite only

_V0_SCHEMA = [
    """CREATE TABLE facets (tbl TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL,
       label TEXT NOT NULL, value, PRIMARY KEY (tbl, key, seq)) WITHOUT ROWID""",
    "CREATE TABLE facet_seq (id INTEGER PRIMARY KEY CHECK (id = 0), n INTEGER NOT NULL)",
    "INSERT INTO facet_seq (id, n) VALUES (0, 0)",
    """CREATE TRIGGER facets_write_rule BEFORE INSERT ON facets BEGIN
       DELETE FROM facets WHERE tbl = NEW.tbl AND key = NEW.key
          AND trapeze_flows(NEW.label, label);
       UPDATE facet_seq SET n = NEW.seq WHERE id = 0; END""",
]


def test_sqlite_migrates_first_layout(tmp_path: Path, lattice: Lattice) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.create_function("trapeze_flows", 2, lattice.flows, deterministic=True)
    for stmt in _V0_SCHEMA:
        conn.execute(stmt)
    writes = [("k", "public", '"p"'), ("k", "client:alice", '"a"'), ("k", "client:bob", None),
              ("k2", "owner", "[1]"), ("k", "photographer:carol", '"c"')]
    for key, lab, val in writes:
        conn.execute(
            "INSERT INTO facets (tbl, key, seq, label, value) "
            "VALUES ('t', ?, (SELECT n + 1 FROM facet_seq), ?, ?)", (key, lab, val)
        )
    conn.close()

    with open_store(f"sqlite:///{path}", lattice) as store:
        raw = store.raw_facets("t", "k")
        assert [(s, lab) for s, lab, _, _ in raw] == [
            (5, "photographer:carol"), (3, "client:bob"), (2, "client:alice"), (1, "public")
        ]
        assert store.get("t", "k", label="client:alice") == "a"
        assert store.get("t", "k", label="client:bob") is None
        assert store.get("t", "k", label="public") == "p"
        assert store.get("t", "k", label="owner") == "c"
        assert store.get("t", "k2", label="top") == [1]
        seq = store.put_seq("t", "k", "p3", label="public")
        assert seq is not None and seq > 5
        assert [lab for _, lab, _, _ in store.raw_facets("t", "k")] == ["public"]
        assert store.integrity_check() == ["ok"]
    conn = sqlite3.connect(path)
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert "facet_seq" not in names and "facets_write_rule" not in names
    assert "facets_v0" not in names


def test_sqlite_no_python_callback_per_facet(tmp_path: Path, lattice: Lattice) -> None:
    """The performance property of the label maps: with 16 facets on a key, a put, a get and
    a scan call no Python function from SQL (the trigger reads the writer's mask from the new
    row). Past 63 label ids (byte maps), a put asks Python once per facet it visits."""
    store = open_store(f"sqlite:///{tmp_path}/cb.db", lattice)
    labels = ["public"] + [f"client:u{i}" for i in range(15)]
    for lab in labels:
        store.put("t", "k", lab, label=lab)
    assert len(store.raw_facets("t", "k")) == 16
    store.put("t", "k", "warm", label="client:u3")  # the writer's entry is built now
    cache = store._cache  # type: ignore[attr-defined]
    calls: list[int] = []
    real_above = cache.above

    def counting_above(lid: int) -> bytes:
        calls.append(lid)
        return real_above(lid)

    cache.above = counting_above
    store.put("t", "k", "again", label="client:u3")
    assert calls == []
    assert store.get("t", "k", label="public") == "public"  # the oldest facet: full walk
    assert store.scan("t", label="owner") == [("k", "again")]
    assert store._cache is cache  # type: ignore[attr-defined]  # nothing was reloaded

    for i in range(60):  # past the 63 ids of a mask
        store.put("other", "k", i, label=f"photographer:p{i}")
    store.close()
    # A fresh instance has no w_from for the key: its first put walks all 16 facets, asking
    # Python about each; its next one starts at its own facet, now the newest.
    store = open_store(f"sqlite:///{tmp_path}/cb.db", lattice)
    cache = store._cache  # type: ignore[attr-defined]
    assert cache.n > 63
    real_above = cache.above
    cache.above = counting_above
    store.put("t", "k", "bytes", label="client:u3")
    assert len(calls) == 16
    store.put("t", "k", "bytes again", label="client:u3")
    assert len(calls) == 17
    assert store.get("t", "k", label="client:u3") == "bytes again"
    assert store.get("t", "k", label="public") == "public"
    check_write_rule_invariant(lattice, store.raw_facets("t", "k"))
    store.close()


@pytest.mark.parametrize("many", [False, True], ids=["mask", "byte-map"])
def test_sqlite_writer_with_stale_snapshot(tmp_path: Path, lattice: Lattice, many: bool) -> None:
    """A writer whose cached label maps predate a label another instance interned (and wrote
    above it) must still remove that facet: the trigger hands the unknown id to Python, the
    statement fails, the store reloads its labels and writes again. Every write method."""
    url = f"sqlite:///{tmp_path}/stale.db"
    with open_store(url, lattice) as a, open_store(url, lattice) as b:
        if many:
            for i in range(70):
                a.put("pad", "k", i, label=f"photographer:p{i}")
        for key in ("put", "delete", "put_seq", "expect"):
            a.put("t", key, "low", label="public")  # a's writer entry for public is cached
        writes = {
            "put": lambda: a.put("t", "put", "again", label="public"),
            "delete": lambda: a.delete("t", "delete", label="public"),
            "put_seq": lambda: a.put_seq("t", "put_seq", "again", label="public"),
            "expect": lambda: a.put("t", "expect", "again", label="public", expect="low"),
        }
        for i, (key, write) in enumerate(writes.items()):
            before = a._cache  # type: ignore[attr-defined]
            b.put("t", key, "high", label=f"client:new{i}")  # an id a has never seen
            assert write() is not False  # the conditional put's expectation held
            assert a._cache is not before  # type: ignore[attr-defined]  # a reloaded
        for key in ("put", "delete", "put_seq", "expect"):
            raw = a.raw_facets("t", key)
            assert [lab for _, lab, _, _ in raw] == ["public"], key
        assert a.get("t", "put", label="owner") == "again"
        assert a.get("t", "delete", label="owner") is None
        assert b.get("t", "put_seq", label="client:new2") == "again"


_V1_SCHEMA = [
    "CREATE TABLE facet_labels (id INTEGER PRIMARY KEY, label TEXT NOT NULL UNIQUE)",
    """CREATE TABLE facets (tbl TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL,
       lid INTEGER NOT NULL, value, PRIMARY KEY (tbl, key, seq)) WITHOUT ROWID""",
    """CREATE TRIGGER facets_write_rule_v1 BEFORE INSERT ON facets BEGIN
       DELETE FROM facets WHERE tbl = NEW.tbl AND key = NEW.key
          AND (lid = NEW.lid OR CASE substr((SELECT trapeze_above(NEW.lid)), lid + 1, 1)
                 WHEN x'01' THEN 1 WHEN x'00' THEN 0
                 ELSE trapeze_flows((SELECT label FROM facet_labels WHERE id = NEW.lid),
                                    (SELECT label FROM facet_labels WHERE id = lid)) END);
       END""",
]


def test_sqlite_migrates_v1_layout(tmp_path: Path, lattice: Lattice) -> None:
    """A file of schema version 1 (label ids, no write-rule columns, no version row) is
    upgraded on open; its facets keep their seqs and the write rule applies to them."""
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for stmt in _V1_SCHEMA[:2]:
        conn.execute(stmt)
    conn.executemany("INSERT INTO facet_labels (id, label) VALUES (?, ?)",
                     [(1, "public"), (2, "client:alice"), (3, "owner")])
    conn.executemany("INSERT INTO facets (tbl, key, seq, lid, value) VALUES ('t', ?, ?, ?, ?)",
                     [("k", 10, 1, '"p"'), ("k", 11, 2, '"a"'), ("k", 12, 3, None),
                      ("k2", 13, 2, "[1]")])
    conn.execute(_V1_SCHEMA[2])  # after the rows: it needs the store's SQL functions
    conn.close()
    with open_store(f"sqlite:///{path}", lattice) as store:
        assert store.get("t", "k", label="client:alice") == "a"
        assert store.get("t", "k", label="owner") is None
        assert store.get("t", "k2", label="top") == [1]
        assert store.put_seq("t", "k", "p2", label="public") is not None
        assert [lab for _, lab, _, _ in store.raw_facets("t", "k")] == ["public"]
        assert store.integrity_check() == ["ok"]
    conn = sqlite3.connect(path)
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    version = conn.execute("SELECT version FROM trapeze_schema WHERE component = 'faceted'")
    assert version.fetchone()[0] == FACETED_SCHEMA_VERSION
    conn.close()
    assert "facets_write_rule_v1" not in names and "facets_write_rule_v2" in names


def test_sqlite_refuses_newer_schema(tmp_path: Path, lattice: Lattice) -> None:
    url = f"sqlite:///{tmp_path}/new.db"
    with open_store(url, lattice) as store:
        store.put("t", "k", 1, label="public")
    conn = sqlite3.connect(tmp_path / "new.db", isolation_level=None)
    conn.execute("UPDATE trapeze_schema SET version = 99 WHERE component = 'faceted'")
    conn.close()
    with pytest.raises(StoreSchemaError) as err:
        open_store(url, lattice)
    assert "version 99" in str(err.value) and f"version {FACETED_SCHEMA_VERSION}" in str(err.value)
    assert "new.db" in str(err.value)
    conn = sqlite3.connect(tmp_path / "new.db")
    assert conn.execute("SELECT count(*) FROM facets").fetchone()[0] == 1
    conn.close()
