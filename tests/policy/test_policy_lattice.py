"""The Hello Retail lattice of DESIGN §3 loads from a manifest and orders labels as designed;
warnings about missing joins appear only when workflows need joins."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from policy_helpers import NOT_A_LATTICE, WORKFLOW, line_of

from trapeze.labels import NoJoinError
from trapeze.policy import load_manifest, validate_manifest

App = Callable[..., Path]

HELLO_RETAIL = """
[app]
name = "hello-retail"

[labels]
bottom          = ["public"]
public          = ["client:*", "photographer:*"]
"client:*"      = ["owner", "client-cc:*"]   # client:X ⊑ client-cc:X (same parameter)
"client-cc:*"   = ["cc-company"]
"photographer:*" = ["owner"]
owner           = ["top"]
cc-company      = ["top"]

[principals.owen]
label = "owner"
[principals.alice]
label = "client:alice"
[principals.pat]
label = "photographer:pat"
"""


def test_hello_retail_lattice_flows(app: App) -> None:
    m = load_manifest(app(HELLO_RETAIL))
    lat = m.lattice
    assert (lat.bottom, lat.top) == ("bottom", "top")
    assert m.principals["alice"].label == "client:alice"
    flows = [
        ("bottom", "public"),
        ("public", "client:alice"),
        ("public", "photographer:pat"),
        ("client:alice", "owner"),
        ("photographer:pat", "owner"),
        ("client:alice", "client-cc:alice"),  # the parameter is carried
        ("client-cc:alice", "cc-company"),
        ("owner", "top"),
        ("cc-company", "top"),
        ("bottom", "top"),
    ]
    for a, b in flows:
        assert lat.flows(a, b), (a, b)
    no_flows = [
        ("client:alice", "client:bob"),
        ("client:alice", "client-cc:bob"),
        ("client-cc:alice", "owner"),  # the owner never sees stored card numbers
        ("owner", "cc-company"),
        ("photographer:pat", "client:pat"),
        ("owner", "public"),
    ]
    for a, b in no_flows:
        assert not lat.flows(a, b), (a, b)
    assert lat.join("client:alice", "photographer:pat") == "owner"
    # owner and cc-company are both minimal upper bounds of two different clients.
    with pytest.raises(NoJoinError):
        lat.join("client:alice", "client:bob")
    assert lat.join("owner", "cc-company") == "top"
    assert lat.meet("client:alice", "client:bob") == "public"


def test_missing_joins_warn_only_with_workflows(app: App) -> None:
    root = app(NOT_A_LATTICE)
    manifest, errors, warnings = validate_manifest(root)
    assert manifest is not None and errors == [] and warnings == []

    root = app(NOT_A_LATTICE + WORKFLOW, {"w.json": '{"StartAt": "s", "States": {"s": {}}}'})
    manifest, errors, warnings = validate_manifest(root)
    assert manifest is not None and errors == []
    assert len(warnings) == 1
    (w,) = warnings
    assert w.line == line_of(root, "[labels]")
    assert "'a' and 'b' have no least upper bound" in w.message
    assert manifest.warnings == (w,)


def test_hello_retail_missing_join_is_named_when_workflows_exist(app: App) -> None:
    # DESIGN §3's order is not a lattice for two different clients (owner and cc-company
    # both sit above them); with a workflow declared the check says so, as a warning.
    root = app(HELLO_RETAIL + WORKFLOW, {"w.json": '{"StartAt": "s", "States": {"s": {}}}'})
    (w,) = load_manifest(root).warnings
    assert "'client:a' and 'client:b' have no least upper bound" in w.message
    assert w.line == line_of(root, "[labels]")
