"""Logs and audit past the system tables' page size: viewers get the newest entries."""

from __future__ import annotations

from pathlib import Path

from trapeze.labels import Lattice
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
