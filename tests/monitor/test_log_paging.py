"""Logs and audit past the system tables' page size: viewers get the newest entries."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trapeze.labels import Lattice
from trapeze.monitor.audit import audit_row, for_viewer, log_row
from trapeze.runtime.app import all_pages, newest
from trapeze.store import open_store


def test_newest_entries_past_one_page(tmp_path: Path) -> None:
    lattice = Lattice.chain(["low", "high"])
    store = open_store(f"sqlite:///{tmp_path / 'p.db'}", lattice)
    system = store.system
    for i in range(2500):
        label = "high" if i % 2 else "low"
        system.append_audit("raise", label=label, detail={"i": i})
        system.append_log("f", f"r{i}", label, f"line {i}")

    def low_logs(since: int) -> list:
        return system.logs(visible=lambda lab: lab == "low", since_seq=since)

    last = newest(low_logs, 10)
    assert [r.text for r in last] == [f"line {i}" for i in range(2480, 2500, 2)]
    assert len(list(all_pages(low_logs))) == 1250

    audit = newest(lambda s: [r for r in system.audit(since_seq=s) if r.label == "low"], 3,
                   page_end=lambda s: system.audit(since_seq=s))
    assert [r.detail["i"] for r in audit] == [2494, 2496, 2498]
    store.close()


def test_viewer_cursors_past_one_page(tmp_path: Path) -> None:
    """What Runtime.logs_visible_to / audit_visible_to return: cursors number the rows the
    viewer sees, across the tables' pages, and `after` pages forward from one."""
    lattice = Lattice.chain(["low", "high"])
    store = open_store(f"sqlite:///{tmp_path / 'p.db'}", lattice)
    system = store.system
    for i in range(2500):
        label = "high" if i % 3 else "low"  # 834 low rows, among 2500
        system.append_audit("raise", label=label, detail={"i": i})
        system.append_log("f", f"r{i}", label, f"line {i}")

    def low_audit() -> Iterator[Any]:
        return (r for r in all_pages(lambda s: system.audit(since_seq=s)) if r.label == "low")

    def low_logs() -> Iterator[Any]:
        return all_pages(lambda s: system.logs(visible=lambda lab: lab == "low", since_seq=s))

    last = [audit_row(n, r) for n, r in for_viewer(low_audit(), after=None, limit=2)]
    assert [(e["cursor"], e["detail"]["i"]) for e in last] == [(833, 2496), (834, 2499)]
    assert all("seq" not in e for e in last)
    page = [log_row(n, r) for n, r in for_viewer(low_logs(), after=400, limit=3)]
    assert [(e["cursor"], e["text"]) for e in page] == [
        (401, "line 1200"), (402, "line 1203"), (403, "line 1206")]
    assert for_viewer(low_logs(), after=834, limit=3) == []
    store.close()
