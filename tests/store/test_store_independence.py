"""Noninterference of the store: the view at l never depends on facets above l.

Two stores receive the same writes, except that store B also receives extra writes at labels
that do not flow to l (they can only touch facets invisible at l, because the write rule only
removes facets at or above the writer's label). Every call at l must answer identically,
including conditional puts, which are also applied to both.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from store.conftest import STORE_SETTINGS, Backend
from store.strategies import LABELS, LATTICE, keys, labels, norm, norm_list, tables, values

ops = st.lists(
    st.tuples(
        st.sampled_from(["both", "b-only"]),
        st.sampled_from(["put", "delete"]),
        tables,
        keys,
        values,
        labels,
    ),
    max_size=30,
)


@given(observer=labels, writes=ops, probes=st.lists(st.tuples(tables, keys, values), max_size=5))
@STORE_SETTINGS
def test_view_ignores_facets_above(
    backend: Backend, observer: str, writes: list[tuple[Any, ...]],
    probes: list[tuple[str, str, Any]],
) -> None:
    a, b = backend.open(LATTICE), backend.open(LATTICE)
    try:
        for who, op, table, key, value, label in writes:
            if who == "b-only":
                hidden = [x for x in LABELS if not LATTICE.flows(x, observer)]
                if not hidden:
                    continue  # observer is top: nothing is above it
                label = hidden[LABELS.index(label) % len(hidden)]
            targets = [b] if who == "b-only" else [a, b]
            for s in targets:
                if op == "put":
                    s.put(table, key, value, label=label)
                else:
                    s.delete(table, key, label=label)
        assert_same_view(a, b, observer)
        for table, key, value in probes:
            # A conditional write at l decides on the l-view only, so it agrees too.
            expect = a.get(table, key, label=observer)
            assert a.put(table, key, value, label=observer, expect=expect) == b.put(
                table, key, value, label=observer, expect=expect
            )
            assert a.put(table, key, 0, label=observer, expect=value) == b.put(
                table, key, 0, label=observer, expect=value
            )
        assert_same_view(a, b, observer)
    finally:
        a.close()
        b.close()


def assert_same_view(a: Any, b: Any, label: str) -> None:
    from store.strategies import KEYS, PREFIXES, TABLES

    assert a.tables(label=label) == b.tables(label=label)
    for table in TABLES:
        for key in KEYS:
            assert norm(a.get(table, key, label=label)) == norm(b.get(table, key, label=label))
            assert norm_list(a.facets(table, key, label=label)) == norm_list(
                b.facets(table, key, label=label)
            )
        for prefix in PREFIXES:
            for limit in (1, 100):
                assert norm_list(a.scan(table, label=label, prefix=prefix, limit=limit)) == (
                    norm_list(b.scan(table, label=label, prefix=prefix, limit=limit))
                )
