"""The write rule's invariant, checked on a key's raw facets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trapeze.labels import Lattice


def check_write_rule_invariant(
    lattice: Lattice, facets: Sequence[tuple[int, str, Any, bool]]
) -> None:
    """For distinct facets f, g of one key: label(f) ⊑ label(g) implies seq(g) > seq(f).

    In particular no two facets share a label (each would have to be newer than the other).
    """
    seqs = [f[0] for f in facets]
    assert len(set(seqs)) == len(seqs), f"duplicate seq among facets {facets!r}"
    for i, f in enumerate(facets):
        for j, g in enumerate(facets):
            if i != j and lattice.flows(f[1], g[1]):
                assert g[0] > f[0], (
                    f"facet {g!r} is older than {f!r} although {f[1]} ⊑ {g[1]}: "
                    "the write rule should have removed it"
                )
