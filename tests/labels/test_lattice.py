"""Lattice laws, on random label orders (with families) and on the Hello Retail order."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trapeze.labels import LabelError, Lattice, NoJoinError, UnknownLabelError
from trapeze.labels.examples import HELLO_RETAIL


@st.composite
def random_orders(draw: st.DrawFn) -> Lattice:
    """A random DAG between a bottom and a top; some inner nodes are families."""
    n = draw(st.integers(min_value=0, max_value=6))
    is_family = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    names = [f"f{i}:*" if fam else f"n{i}" for i, fam in enumerate(is_family)]
    diagram: dict[str, list[str]] = {"bot": [], "tp": []}
    for i, name in enumerate(names):
        # Edges only go from lower to higher index: acyclic by construction.
        ups = draw(st.lists(st.sampled_from(names[i + 1 :] or ["tp"]), max_size=3, unique=True))
        diagram[name] = ups or ["tp"]
        if "tp" not in diagram[name] and not draw(st.booleans()):
            diagram[name].append("tp")
    # Every node reachable from bottom: bottom points to each node nobody points to.
    pointed = {u for ups in diagram.values() for u in ups}
    diagram["bot"] = [n for n in names if n not in pointed] or ["tp"]
    return Lattice.from_hasse(diagram)


def members(lat: Lattice) -> list[str]:
    return lat.sample_labels(("x", "y"))


@given(random_orders())
@settings(max_examples=150, deadline=None)
def test_partial_order_laws(lat: Lattice) -> None:
    labels = members(lat)
    for a in labels:
        assert lat.flows(a, a)
        assert lat.flows(lat.bottom, a)
        assert lat.flows(a, lat.top)
    for a, b in itertools.permutations(labels, 2):
        if lat.flows(a, b) and lat.flows(b, a):
            pytest.fail(f"antisymmetry broken: {a} and {b}")
    for a, b, c in itertools.product(labels, repeat=3):
        if lat.flows(a, b) and lat.flows(b, c):
            assert lat.flows(a, c), (a, b, c)


def _check_bounds(lat: Lattice, labels: list[str]) -> None:
    for a, b in itertools.combinations_with_replacement(labels, 2):
        uppers = [c for c in labels if lat.flows(a, c) and lat.flows(b, c)]
        try:
            j = lat.join(a, b)
        except NoJoinError:
            least = [c for c in uppers if all(lat.flows(c, d) for d in uppers)]
            assert len(least) != 1, (a, b, least)
        else:
            assert lat.flows(a, j) and lat.flows(b, j)
            assert all(lat.flows(j, c) for c in uppers), (a, b, j)
            assert lat.join(b, a) == j
        lowers = [c for c in labels if lat.flows(c, a) and lat.flows(c, b)]
        try:
            m = lat.meet(a, b)
        except NoJoinError:
            greatest = [c for c in lowers if all(lat.flows(d, c) for d in lowers)]
            assert len(greatest) != 1, (a, b, greatest)
        else:
            assert lat.flows(m, a) and lat.flows(m, b)
            assert all(lat.flows(c, m) for c in lowers), (a, b, m)


@given(random_orders())
@settings(max_examples=100, deadline=None)
def test_join_is_least_upper_bound_and_meet_greatest_lower_bound(lat: Lattice) -> None:
    _check_bounds(lat, members(lat))


@given(random_orders())
@settings(max_examples=100, deadline=None)
def test_text_round_trip(lat: Lattice) -> None:
    again = Lattice.from_hasse(lat.diagram())
    labels = members(lat)
    assert again.bottom == lat.bottom and again.top == lat.top
    for a, b in itertools.product(labels, repeat=2):
        assert again.flows(a, b) == lat.flows(a, b)
    for a in labels:
        assert lat.check(a) == a  # labels are their own canonical text


def test_hello_retail_order() -> None:
    lat = Lattice.from_hasse(HELLO_RETAIL)
    assert (lat.bottom, lat.top) == ("bottom", "top")
    f = lat.flows
    assert f("client:alice", "client-cc:alice")
    assert not f("client:alice", "client-cc:bob")  # family edges carry the parameter
    assert f("public", "client-cc:anyone")  # plain-to-family: every member
    assert f("client-cc:alice", "cc-company")  # family-to-plain: every member
    assert not f("client-cc:alice", "owner")
    assert not f("client:alice", "client:bob")
    assert not f("photographer:p", "client:p")
    assert f("photographer:p", "owner") and not f("owner", "cc-company")
    assert lat.join("client:a", "photographer:b") == "owner"
    assert lat.join("client-cc:a", "client-cc:b") == "cc-company"
    assert lat.join("owner", "cc-company") == "top"
    with pytest.raises(NoJoinError, match="client:a.*client:b"):
        lat.join("client:a", "client:b")  # owner and cc-company are both minimal upper bounds
    _check_bounds(lat, lat.sample_labels(("a", "b")))


def test_chain() -> None:
    lat = Lattice.chain(["low", "medium", "high"])
    assert lat.flows("low", "high") and not lat.flows("high", "medium")
    assert lat.join("low", "medium") == "medium" and lat.meet("low", "high") == "low"
    assert lat.missing_joins() == []


@pytest.mark.parametrize(
    ("diagram", "message"),
    [
        ({"a": ["b"], "b": ["a"]}, r"cycle a ⊑ b ⊑ a"),
        ({"b": ["t"], "c": ["t"]}, r"exactly one bottom, found 2: b, c"),
        ({"b": ["x", "y"]}, r"exactly one top, found 2: x, y"),
        ({"b": ["client:bob"]}, r"'client:bob' names one member"),
        ({"b": ["bad name"]}, r"invalid label name 'bad name'"),
        ({"b": ["b"]}, r"listed above itself"),
        ({"b": "t"}, r"must list the labels above it"),
        ({"b": ["f:*"], "f:*": ["g:*"], "g:*": ["f:*"]}, r"cycle"),
        ({"b": ["t"], "f:*": ["t"]}, r"family 'f:\*' has nothing below"),
        ({"b": ["x", "x:*"], "x": ["t"], "x:*": ["t"]}, r"both as a plain label and as a family"),
    ],
)
def test_invalid_orders_are_rejected_with_the_offending_labels(
    diagram: dict[str, object], message: str
) -> None:
    with pytest.raises(LabelError, match=message):
        Lattice.from_hasse(diagram)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("nobody", "unknown label 'nobody'"),
        ("nofam:x", "unknown label family 'nofam'"),
        ("client", "'client' is a family"),
        ("client:", "invalid parameter"),
        ("client:*", "invalid parameter"),
        ("client:a b", "invalid parameter"),
        # A guest could otherwise make the store intern (and compare, per caller) labels of
        # any length (review).
        ("client:" + "a" * 257, "at most 256"),
    ],
)
def test_unknown_labels_are_named(label: str, message: str) -> None:
    lat = Lattice.from_hasse(HELLO_RETAIL)
    with pytest.raises(UnknownLabelError, match=message):
        lat.flows(label, "top")
    assert not lat.is_label(label)


def test_a_lattice_survives_pickling_with_its_caches_rebuilt() -> None:
    """The Ray executor sends the manifest (with its lattice) to every node by pickle."""
    import pickle

    lat = Lattice.from_hasse({"public": ["user:*"], "user:*": ["admin"], "admin": []})
    assert lat.flows("public", "user:a")  # fill the caches first
    copy = pickle.loads(pickle.dumps(lat))
    assert copy.flows("public", "user:a") and not copy.flows("user:a", "user:b")
    assert copy.join("user:a", "user:b") == "admin" and copy.bottom == "public"
