"""Bad input: clear errors naming what is wrong, and nothing written."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import pytest

from trapeze.errors import ConfigError, InvalidArgument
from trapeze.labels import UnknownLabelError
from trapeze.store import FacetedStore, open_plain_store, open_store


def snapshot(store: FacetedStore) -> list[Any]:
    """Everything visible at top: any write at all would change it."""
    top = store.lattice.top  # type: ignore[attr-defined]
    out: list[Any] = []
    for table in store.tables(label=top):
        for key, _ in store.scan(table, label=top, limit=10_000):
            out.append((table, key, store.raw_facets(table, key)))
    return out + [store.tables(label=top)]


@pytest.fixture
def seeded(store: FacetedStore) -> FacetedStore:
    store.put("t", "k", {"a": 1}, label="public")
    store.put("t", "k", {"a": 2}, label="client:alice")
    return store


class Weird:
    pass


BAD_VALUES = [
    (float("nan"), "finite"),
    (float("inf"), "finite"),
    ({"x": [1, -math.inf]}, "value['x'][1]"),
    ({1: "int key"}, "keys must be str"),
    ((1, 2), "tuple"),
    ({"s": {1, 2}}, "set"),
    (Weird(), "Weird"),
    ([b"nested bytes"], "bytes are allowed only as a whole value"),
    ("lone \ud800 surrogate", "surrogate"),
    ({"\udfff": 1}, "surrogate"),
    (OrderedDict(a=1), "OrderedDict"),
    (1 + 2j, "complex"),
]


@pytest.mark.parametrize(("value", "fragment"), BAD_VALUES, ids=[repr(v[1]) for v in BAD_VALUES])
def test_bad_values_rejected(seeded: FacetedStore, value: Any, fragment: str) -> None:
    before = snapshot(seeded)
    with pytest.raises(InvalidArgument, match=None) as err:
        seeded.put("t", "k", value, label="public")
    assert fragment in str(err.value)
    with pytest.raises(InvalidArgument):
        seeded.put("t", "k2", {"ok": 1}, label="public", expect=value)
    assert snapshot(seeded) == before


def test_deep_nesting_rejected(seeded: FacetedStore) -> None:
    deep: Any = 0
    for _ in range(500):
        deep = [deep]
    before = snapshot(seeded)
    with pytest.raises(InvalidArgument, match="nested deeper"):
        seeded.put("t", "deep", deep, label="public")
    assert snapshot(seeded) == before


BAD_NAMES = [
    (None, "must be a str"),
    (b"bytes", "must be a str"),
    (7, "must be a str"),
    ("nul\x00inside", "NUL"),
    ("\ud800", "surrogate"),
    ("x" * 1025, "too long"),
]


@pytest.mark.parametrize(("name", "fragment"), BAD_NAMES, ids=[f[1] for f in BAD_NAMES])
def test_bad_keys_and_tables(seeded: FacetedStore, name: Any, fragment: str) -> None:
    before = snapshot(seeded)
    for call in (
        lambda: seeded.put("t", name, 1, label="public"),
        lambda: seeded.delete("t", name, label="public"),
        lambda: seeded.get("t", name, label="public"),
        lambda: seeded.put(name, "k", 1, label="public"),
        lambda: seeded.scan(name, label="public"),
        lambda: seeded.scan("t", label="public", prefix=name if name is not None else 5),
    ):
        with pytest.raises(InvalidArgument) as err:
            call()
        assert fragment in str(err.value) or "must be a str" in str(err.value)
    with pytest.raises(InvalidArgument, match="empty"):
        seeded.put("", "k", 1, label="public")
    assert snapshot(seeded) == before


def test_bad_scan_limits(seeded: FacetedStore) -> None:
    for limit in (-1, 1.5, True, "10", 10**9):
        with pytest.raises(InvalidArgument, match="limit"):
            seeded.scan("t", label="public", limit=limit)  # type: ignore[arg-type]


@pytest.mark.parametrize("label", ["nobody", "client", "client:*", "client:a b", "", 3, None])
def test_unknown_labels(seeded: FacetedStore, label: Any) -> None:
    before = snapshot(seeded)
    for call in (
        lambda: seeded.put("t", "k", 1, label=label),
        lambda: seeded.put("t", "k", 1, label=label, expect=None),
        lambda: seeded.delete("t", "k", label=label),
        lambda: seeded.get("t", "k", label=label),
        lambda: seeded.facets("t", "k", label=label),
        lambda: seeded.scan("t", label=label),
    ):
        with pytest.raises(UnknownLabelError):
            call()
    assert snapshot(seeded) == before


ODD = [
    "'; DROP TABLE facets; --",
    'a"b',
    "100%",
    "a_b",
    "back\\slash",
    "semi;colon",
    "?1 :name @x $y",
    "\U0001f600 emoji",
    "\u202eright-to-left",
    "e\u0301 combining",
    "line\u2028sep\nnewline\ttab",
    "\U0010ffff",
    "\x01\x1f control",
    " ",
    "x" * 1024,
]


def test_metacharacters_round_trip(store: FacetedStore) -> None:
    store.put("plain", "k", "untouched", label="public")
    for i, name in enumerate(ODD):
        store.put(name, name, {name: i, "v": name}, label="public")
    for i, name in enumerate(ODD):
        assert store.get(name, name, label="public") == {name: i, "v": name}
        assert store.scan(name, label="public") == [(name, {name: i, "v": name})]
        # Prefixes with LIKE wildcards match literally, never as patterns.
        assert store.scan(name, label="public", prefix=name) == [(name, {name: i, "v": name})]
    assert store.get("plain", "k", label="public") == "untouched"
    assert sorted(store.tables(label="public")) == sorted([*ODD, "plain"])
    assert store.scan("plain", label="public", prefix="%") == []
    assert store.scan("plain", label="public", prefix="_") == []


def test_bytes_and_json_kept_apart(store: FacetedStore) -> None:
    store.put("t", "b", b"null", label="public")
    store.put("t", "j", "null", label="public")
    store.put("t", "n", None, label="public")
    assert store.get("t", "b", label="public") == b"null"
    assert store.get("t", "j", label="public") == "null"
    assert store.get("t", "n", label="public") is None
    # get is None for a JSON null, so scan skips it (DESIGN §5: keys whose get is not None).
    assert [k for k, _ in store.scan("t", label="public")] == ["b", "j"]
    assert store.put("t", "one", 1, label="public")
    assert not store.put("t", "one", 2, label="public", expect=1.0)
    assert not store.put("t", "one", 2, label="public", expect=True)
    assert store.put("t", "one", 2, label="public", expect=1)


def test_urls(tmp_path: Any, lattice: Any) -> None:
    # Nothing listens on 127.0.0.1:9 (discard): a clear connection error naming host and port.
    with pytest.raises(ConfigError, match="cannot connect.*127.0.0.1:9"):
        open_store("postgresql://127.0.0.1:9/app?connect_timeout=2", lattice)
    with pytest.raises(ConfigError, match="cannot connect"):
        open_plain_store("postgresql://127.0.0.1:9/app?connect_timeout=2")
    with pytest.raises(ConfigError, match="scheme"):
        open_store("mysql://x", lattice)
    with pytest.raises(ConfigError, match="synchronous"):
        open_store(f"sqlite:///{tmp_path}/a.db?synchronous=maybe", lattice)
    with pytest.raises(ConfigError, match="unknown option"):
        open_store(f"sqlite:///{tmp_path}/a.db?cache=big", lattice)
    with pytest.raises(ConfigError, match="file path"):
        open_store("sqlite://:memory:", lattice)
    with pytest.raises(ConfigError, match="cache_mb"):
        open_store(f"sqlite:///{tmp_path}/a.db?cache_mb=lots", lattice)
    with open_store(f"sqlite:///{tmp_path}/b.db?synchronous=full", lattice) as s:
        s.put("t", "k", 1, label="public")
        assert s.get("t", "k", label="owner") == 1
    with open_plain_store(f"sqlite:///{tmp_path}/c.db?cache_mb=64") as p:
        conn = p._conns.get()  # type: ignore[attr-defined]
        assert conn.execute("PRAGMA cache_size").fetchone()[0] == -64 * 1024
