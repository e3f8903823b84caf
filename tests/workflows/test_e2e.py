"""Streams and workflows end to end through the real platform: confined functions, the
monitor, the invoker and the faceted store in one SQLite file.

The runtime starts the engines itself and routes its Dispatcher calls to them (see
docs/streams-and-workflows.md, "Wiring"); the tests use the runtime's own `rt.engines`. A
second `Engines` over the same file would run a second stream scheduler and resume the same
workflow executions twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trapeze import App
from trapeze.runtime.workflows import Engines, stream_tail, workflow_describe, workflow_list

APP = Path(__file__).parent / "e2e_app"


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Engines, str]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('e2e') / 'app.db'}"
    with App.load(APP).start(store=url) as rt:
        assert rt.engines is not None and rt.invoker.engines is rt.engines
        yield rt, rt.engines, url


def test_stream_records_reach_the_consumer_at_their_own_label(
        platform: tuple[Any, Engines, str]) -> None:
    rt, engines, url = platform
    puts = [("public", {"i": 0}), ("alice", {"i": 1, "ifcLabel": "public"}),
            ("public", {"i": 2, "label": "top"}), ("bob", {"i": 3}), ("public", {"i": 4})]
    for lab, record in puts:
        r = rt.invoke("producer", {"record": record, "key": "k"}, as_label=lab)
        assert r.status == "ok", r
    assert engines.streams.wait_idle(30)

    def seen(view_label: str) -> dict[str, Any]:
        return dict(rt.view(view_label).scan("seen", limit=100))

    public = seen("public")
    assert sorted(v["data"]["i"] for v in public.values()) == [0, 2, 4]
    assert all(v["label"] == "public" for v in public.values())
    alice = {v["data"]["i"]: v["label"] for v in seen("alice").values()}
    assert alice == {0: "public", 1: "alice", 2: "public", 4: "public"}
    assert {v["data"]["i"]: v["label"] for v in seen("top").values()}[3] == "bob"
    # The CLI's view respects the clearance.
    tail = stream_tail(url, rt.manifest, "events", clearance="bob", as_label="public")
    assert [r["data"]["i"] for r in tail] == [0, 2, 4]
    assert [r["data"]["i"] for r in stream_tail(url, rt.manifest, "events",
                                                 clearance="bob")] == [0, 2, 3, 4]


def test_workflow_label_rises_and_a_callback_completes_at_it(
        platform: tuple[Any, Engines, str]) -> None:
    rt, engines, url = platform
    arn = engines.workflows.start("pipeline", "order-1", {"n": 1}, "public")["executionArn"]
    task = engines.workflows.get_activity_task("approve", "alice", wait_s=30)
    assert task is not None and task["input"]["secret"] == "alice's"
    # A public completer must first raise to the task's label; then the reply is withheld
    # from its public invoker, and the execution goes on.
    r = rt.invoke("completer", {"token": task["taskToken"], "at": "alice"}, as_label="public")
    assert r.status == "withheld"
    assert engines.workflows.wait(arn, 30)
    high = workflow_describe(url, rt.manifest, "order-1", clearance="alice")
    assert high["status"] == "SUCCEEDED", high
    assert high["output"] == {"n": 20, "label": "alice"}
    low = workflow_describe(url, rt.manifest, "order-1", clearance="bob", as_label="public")
    assert low["status"] == "RUNNING" and low["output"] is None
    assert [e["state"] for e in low["history"] if e["type"] == "StateExited"] == ["Public"]
    assert [x["name"] for x in workflow_list(url, rt.manifest, clearance="public")] == \
        ["order-1"]
    steps = dict(rt.view("top").scan("steps", limit=10))
    assert steps == {"public": "public", "raise": "alice", "after": "alice"}
    assert dict(rt.view("public").scan("steps", limit=10)) == {"public": "public"}


def test_a_workflow_started_high_is_invisible_low(platform: tuple[Any, Engines, str]) -> None:
    rt, engines, url = platform
    before = workflow_list(url, rt.manifest, clearance="public")
    arn = engines.workflows.start("pipeline", "hidden", {"n": 5}, "bob")["executionArn"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if any(e["type"] == "StateExited" for e in
               engines.workflows.describe(arn, "top")["history"]):
            break
        time.sleep(0.05)
    assert workflow_list(url, rt.manifest, clearance="public") == before
    assert "hidden" not in [x["name"] for x in workflow_list(url, rt.manifest,
                                                              clearance="alice")]
