"""Hypothesis strategies shared by the store tests."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from store.conftest import hello_retail

LATTICE = hello_retail()
# Two parameters per family: enough to exercise same-parameter edges and incomparable members.
LABELS = LATTICE.sample_labels(("alice", "bob"))
TABLES = ["t1", "t'2; DROP TABLE facets;--"]
# Shared prefixes, SQL/LIKE metacharacters and code points at the edges of Unicode, so that
# prefix bounds and ordering are exercised.
KEYS = ["", "a", "a/b", "a/c", "ab", "b", "b%", "b_", "it's", "ü", "\U0010ffff",
        "a\U0010ffff", "\ud7ff"]
PREFIXES = ["", "a", "a/", "b", "\U0010ffff", "\ud7ff", "z"]

labels = st.sampled_from(LABELS)
tables = st.sampled_from(TABLES)
keys = st.sampled_from(KEYS)
prefixes = st.sampled_from(PREFIXES)

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
)
json_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)
# A small pool makes conditional puts succeed often; the rest explores the value space.
POOL: list[Any] = [0, 1, 1.0, True, "x", b"x", None, {"n": 1}, [1]]
values = st.one_of(st.sampled_from(POOL), json_values, st.binary(max_size=6))


def norm(x: Any) -> Any:
    """A strict comparison form: 1, 1.0 and True differ, dict order matters, bytes tagged."""
    if isinstance(x, bytes):
        return ("bytes", x)
    if isinstance(x, tuple):
        return tuple(norm(i) for i in x)
    return ("json", json.dumps(x))


def norm_list(xs: list[Any]) -> list[Any]:
    return [norm(x) for x in xs]
