"""Streams and workflows end to end through the real platform with all state in PostgreSQL:
`App.start(store="postgresql://...")` puts the faceted store, the system tables and the
engines' tables in one fresh database of the session's throwaway cluster (what `trapeze run
APP --store postgresql://...` does), and the CLI reads them back from there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from trapeze import App
from trapeze.cli import main as cli_main

APP = Path(__file__).parent / "e2e_app"


def test_stream_consumer_and_workflow_on_postgresql(pg_database: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    app = App.load(APP)
    with app.start(store=pg_database, http=False) as rt:
        engines = rt.engines
        assert engines is not None and "PostgresEngineDB" in repr(engines.db)
        # A stream consumer: each record at its own label, the forged field ignored.
        for lab, record in [("public", {"i": 0}), ("alice", {"i": 1, "label": "public"}),
                            ("public", {"i": 2})]:
            r = rt.invoke("producer", {"record": record, "key": "k"}, as_label=lab)
            assert r.status == "ok", r
        assert engines.streams.wait_idle(30)
        public = dict(rt.view("public").scan("seen", limit=100))
        assert sorted(v["data"]["i"] for v in public.values()) == [0, 2]
        alice = {v["data"]["i"]: v["label"]
                 for _, v in rt.view("alice").scan("seen", limit=100)}
        assert alice == {0: "public", 1: "alice", 2: "public"}

        # A workflow whose label rises, with an activity task completed at that label.
        arn = engines.workflows.start("pipeline", "order-pg", {"n": 1}, "public")[
            "executionArn"]
        task = engines.workflows.get_activity_task("approve", "alice", wait_s=30)
        assert task is not None and task["input"]["secret"] == "alice's"
        r = rt.invoke("completer", {"token": task["taskToken"], "at": "alice"},
                      as_label="public")
        assert r.status == "withheld"
        assert engines.workflows.wait(arn, 30)
        assert dict(rt.view("top").scan("steps", limit=10)) == {
            "public": "public", "raise": "alice", "after": "alice"}

    # Everything is in PostgreSQL: the CLI reads it back after the runtime has stopped.
    def cli(*args: str) -> Any:
        capsys.readouterr()
        assert cli_main([*args, "--store", pg_database]) == 0
        return json.loads(capsys.readouterr().out)

    high = cli("workflow", "describe", str(APP), "order-pg", "--label", "alice")
    assert high["status"] == "SUCCEEDED" and high["output"] == {"n": 20, "label": "alice"}
    low = cli("workflow", "describe", str(APP), "order-pg", "--label", "public")
    assert low["status"] == "RUNNING" and low["output"] is None
    tail = cli("stream", "tail", str(APP), "events", "--label", "public")
    assert [r["data"]["i"] for r in tail] == [0, 2]
    with psycopg.connect(pg_database) as conn:
        components: dict[str, int] = dict(conn.execute(
            "SELECT component, version FROM trapeze.trapeze_schema").fetchall())
    assert {"faceted", "system", "engine"} <= set(components)
