"""Stateful conformance: the backend and the reference model give identical answers."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from store.conftest import STORE_SETTINGS, Backend
from store.invariants import check_write_rule_invariant
from store.model import ModelStore
from store.strategies import (
    LATTICE,
    POOL,
    keys,
    labels,
    norm,
    norm_list,
    prefixes,
    tables,
    values,
)
from trapeze.store import FacetedStore


def make_machine(backend: Backend) -> type[RuleBasedStateMachine]:
    class StoreMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.store: FacetedStore = backend.open(LATTICE)
            self.model = ModelStore(LATTICE)
            self.touched: set[tuple[str, str]] = set()

        def teardown(self) -> None:
            self.store.close()

        # ---------------------------------------------------------------- writes
        @rule(table=tables, key=keys, value=values, label=labels)
        def put(self, table: str, key: str, value: Any, label: str) -> None:
            got = self.store.put_seq(table, key, value, label=label)
            # Seqs are the store's (time-based); the model checks they rise per key and
            # replays them, so raw states still compare seq for seq.
            want = self.model.put_seq(table, key, value, label=label, seq=got)
            assert got == want
            self.touched.add((table, key))

        def newest_seq(self, table: str, key: str) -> int:
            """Seq of the facet a write just added: the key's highest."""
            return max(s for s, _, _, _ in self.store.raw_facets(table, key))

        @rule(table=tables, key=keys, label=labels)
        def delete(self, table: str, key: str, label: str) -> None:
            self.store.delete(table, key, label=label)
            self.model.put_seq(table, key, None, label=label, tombstone=True,
                               seq=self.newest_seq(table, key))
            self.touched.add((table, key))

        @rule(
            table=tables,
            key=keys,
            value=values,
            label=labels,
            expect=st.one_of(st.just("current"), st.sampled_from(POOL), values),
        )
        def conditional_put(self, table: str, key: str, value: Any, label: str,
                            expect: Any) -> None:
            if expect == "current":
                # Expect what the model says is there, so that successes are common.
                expect = self.model.get(table, key, label=label)
            got = self.store.put(table, key, value, label=label, expect=expect)
            seq = self.newest_seq(table, key) if got else None
            want = self.model.put_seq(table, key, value, label=label, expect=expect, seq=seq)
            assert got == (want is not None)
            self.touched.add((table, key))

        # ---------------------------------------------------------------- reads
        @rule(table=tables, key=keys, label=labels)
        def get(self, table: str, key: str, label: str) -> None:
            assert norm(self.store.get(table, key, label=label)) == norm(
                self.model.get(table, key, label=label)
            )

        @rule(table=tables, key=keys, label=labels)
        def facets(self, table: str, key: str, label: str) -> None:
            assert norm_list(self.store.facets(table, key, label=label)) == norm_list(
                self.model.facets(table, key, label=label)
            )

        @rule(
            table=tables,
            label=labels,
            prefix=prefixes,
            start_after=st.one_of(st.none(), keys),
            limit=st.integers(0, 5),
        )
        def scan(self, table: str, label: str, prefix: str, start_after: str | None,
                 limit: int) -> None:
            got = self.store.scan(table, label=label, prefix=prefix,
                                  start_after=start_after, limit=limit)
            want = self.model.scan(table, label=label, prefix=prefix,
                                   start_after=start_after, limit=limit)
            assert norm_list(got) == norm_list(want)

        @rule(table=tables, label=labels, prefix=prefixes, page=st.integers(1, 3))
        def paginate(self, table: str, label: str, prefix: str, page: int) -> None:
            # Walking pages with start_after = last key must yield exactly the full scan.
            out: list[tuple[str, Any]] = []
            after: str | None = None
            while True:
                chunk = self.store.scan(table, label=label, prefix=prefix,
                                        start_after=after, limit=page)
                out += chunk
                if len(chunk) < page:
                    break
                after = chunk[-1][0]
            want = self.model.scan(table, label=label, prefix=prefix, limit=10_000)
            assert norm_list(out) == norm_list(want)

        @rule(label=labels)
        def tables_(self, label: str) -> None:
            assert self.store.tables(label=label) == self.model.tables(label=label)

        # ---------------------------------------------------------------- invariants
        @precondition(lambda self: bool(self.touched))
        @invariant()
        def raw_state_matches(self) -> None:
            for table, key in self.touched:
                raw = self.store.raw_facets(table, key)
                check_write_rule_invariant(LATTICE, raw)
                assert [(s, lab, norm(v), t) for s, lab, v, t in raw] == [
                    (s, lab, norm(v), t) for s, lab, v, t in self.model.raw_facets(table, key)
                ]

    return StoreMachine


def test_backend_matches_model(backend: Backend) -> None:
    run_state_machine_as_test(make_machine(backend), settings=STORE_SETTINGS)
