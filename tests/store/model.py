"""Reference model of the faceted store, written straight from DESIGN §5 in plain Python.

Deliberately naive (lists, linear scans, no caching) so that it is obviously the spec; the
SQLite backend must give identical answers. Values are kept as deep copies so that a caller
mutating its argument afterwards cannot change the model.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from trapeze.labels import Lattice
from trapeze.store import MISSING


@dataclass
class Facet:
    value: Any
    label: str
    seq: int
    tombstone: bool


def same_value(a: Any, b: Any) -> bool:
    """Equality as the store defines it: same JSON (so 1, 1.0 and True differ) or same bytes."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, bytes) or isinstance(b, bytes):
        return isinstance(a, bytes) and isinstance(b, bytes) and a == b
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


class ModelStore:
    def __init__(self, lattice: Lattice) -> None:
        self.lattice = lattice
        self.seq = 0
        self.keys: dict[tuple[str, str], list[Facet]] = {}
        # Highest seq ever given to each key (facets since removed included).
        self.last_seq: dict[tuple[str, str], int] = {}

    def _visible(self, table: str, key: str, label: str) -> list[Facet]:
        """Facets with label ⊑ l, newest first."""
        facets = self.keys.get((table, key), [])
        vis = [f for f in facets if self.lattice.flows(f.label, label)]
        return sorted(vis, key=lambda f: f.seq, reverse=True)

    def get(self, table: str, key: str, *, label: str) -> Any:
        vis = self._visible(table, key, label)
        if not vis or vis[0].tombstone:
            return None
        return copy.deepcopy(vis[0].value)

    def facets(self, table: str, key: str, *, label: str) -> list[tuple[Any, str]]:
        # Tombstones are omitted (docs/store.md): they mark absence, they are not values.
        return [
            (copy.deepcopy(f.value), f.label)
            for f in self._visible(table, key, label)
            if not f.tombstone
        ]

    def put_seq(
        self,
        table: str,
        key: str,
        value: Any,
        *,
        label: str,
        expect: object = MISSING,
        tombstone: bool = False,
        seq: int | None = None,
    ) -> int | None:
        """The write rule. ``seq`` lets a replay reuse the seq the real store acknowledged.

        Seqs are only ever compared within a key, so the model requires exactly what the
        store guarantees: a new facet's seq exceeds every seq the key has had.
        """
        if expect is not MISSING and not same_value(self.get(table, key, label=label), expect):
            return None
        old = self.keys.get((table, key), [])
        # Remove every facet whose label l' satisfies l ⊑ l', then add the new one.
        kept = [f for f in old if not self.lattice.flows(label, f.label)]
        if seq is None:
            seq = max(self.seq, self.last_seq.get((table, key), 0)) + 1
        assert seq > self.last_seq.get((table, key), 0), (
            f"seq {seq} for {table!r}/{key!r} is not above the key's previous "
            f"{self.last_seq[(table, key)]}"
        )
        self.seq = max(self.seq, seq)
        self.last_seq[(table, key)] = seq
        kept.append(Facet(copy.deepcopy(value), label, seq, tombstone))
        self.keys[(table, key)] = kept
        return seq

    def put(self, table: str, key: str, value: Any, *, label: str,
            expect: object = MISSING) -> bool:
        return self.put_seq(table, key, value, label=label, expect=expect) is not None

    def delete(self, table: str, key: str, *, label: str) -> None:
        self.put_seq(table, key, None, label=label, tombstone=True)

    def scan(
        self,
        table: str,
        *,
        label: str,
        prefix: str = "",
        start_after: str | None = None,
        limit: int = 100,
    ) -> list[tuple[str, Any]]:
        out = []
        for t, key in sorted(self.keys):
            if t != table or not key.startswith(prefix):
                continue
            if start_after is not None and key <= start_after:
                continue
            value = self.get(table, key, label=label)
            if value is not None:
                out.append((key, value))
        return out[:limit]

    def tables(self, *, label: str) -> list[str]:
        return sorted(
            {t for (t, _), facets in self.keys.items()
             if any(self.lattice.flows(f.label, label) for f in facets)}
        )

    def raw_facets(self, table: str, key: str) -> list[tuple[int, str, Any, bool]]:
        facets = sorted(self.keys.get((table, key), []), key=lambda f: f.seq, reverse=True)
        return [(f.seq, f.label, f.value, f.tombstone) for f in facets]
